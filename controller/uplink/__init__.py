"""Schools' uplink checks: the plan, one check, the HTTP endpoint, their figures."""
