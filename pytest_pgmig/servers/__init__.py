"""Where the PostgreSQL server comes from: a DSN, local binaries or Docker."""
