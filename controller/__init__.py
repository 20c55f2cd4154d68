"""The central daemon: gRPC services, sessions, store, ingest and metrics."""
