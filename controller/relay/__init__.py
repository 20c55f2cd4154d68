"""Messages between the controllers sharing one store: a command for a device reaches
the controller that holds the device's stream, whichever decided it (bus.py: the
channel, in-process on SQLite, PostgreSQL's LISTEN/NOTIFY otherwise; device_commands.py:
commands on it). The store stays the truth: what a missed message would have carried
is sent again from it (``on_gap``)."""
