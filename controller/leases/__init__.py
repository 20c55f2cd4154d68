"""Work that must happen once among the controllers sharing one store (the lesson
dispatcher, the probe and uplink schedules): a lease per kind of work, taken and
renewed in the store by the database's clock, with an epoch that fences off a holder
that lost it (store.py, sql_store.py); a keeper that holds or waits for one lease and
runs the work only while this controller holds it (keeper.py)."""
