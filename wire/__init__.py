"""Between the contract (protos/) and our own values (inventory/): the mapping that the
agent, schoolctl and the controller's api/ share, each field in one place."""
