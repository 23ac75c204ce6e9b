"""Use cases: the only place business rules live. Routers and the CLI call these."""
