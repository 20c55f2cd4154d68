"""The controller's gRPC edge: AgentService and AdminService, and the wire's mapping."""
