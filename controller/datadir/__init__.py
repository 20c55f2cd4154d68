"""The controller's data folder: one controller per folder, its files its own."""
