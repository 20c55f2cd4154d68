"""Schools' access points and servers: the probe schedule, one probe, their figures."""
