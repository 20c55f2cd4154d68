"""Behind a load balancer: each connection's client address from the balancer's PROXY
protocol header, for whatever asks who called (refusal budgets, the audit log, a
device's address)."""
