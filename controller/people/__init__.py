"""Who a person is and what they may do: roles, school scope, refusals and the audit log."""
