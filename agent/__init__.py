"""The device daemon: collects health and keeps the device's stream to the controller."""
