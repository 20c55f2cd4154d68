"""schoolctl's client of the controller's AdminService (the only part of the CLI that
speaks protobuf): one shared Connection (connection.py), a client per feature made
with it, and AdminClient (admin.py) holding them. Commands and renderers get our own
values, never messages.

Empty on purpose: importing a value from here must not load the gRPC stack."""
