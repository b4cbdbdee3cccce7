"""The names the plugin's objects on a server go by: its schema, its lock class, its limits."""

from __future__ import annotations

REGISTRY = "pgmig_registry"
# idle sessions a reset leaves on a schema: a connection kept across tests survives
IDLE_KEPT = 4
# classid of every advisory lock the plugin takes (b"pgmi"), so ours never meet a user's keys
LOCK_CLASS = 0x70676D69
# the names of the login roles schemas get (roles.py): the schema's, pgmig_<run>_<worker>_s<n>;
# the cluster's census does not count them, as other tests make and drop them meanwhile
ROLE_PATTERN = r"^pgmig_[0-9a-f]{8}_[A-Za-z0-9]+_s[0-9]+$"
