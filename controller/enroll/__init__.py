"""Who a device is: the CA, enrollment tokens, device certificates and their renewal."""
