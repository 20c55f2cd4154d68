"""A backup of the controller's data folder and its restore."""
