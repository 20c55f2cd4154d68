"""The demos: `make demo` (demo.py, one controller on SQLite) and `make demo-city`
(city.py, three replicas on PostgreSQL behind HAProxy), and what they share."""
