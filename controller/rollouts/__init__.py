"""Rollouts: the engine that drives waves, the Ansible runner and its worker, the checks."""
