"""Alembic histories as migration sets: applied with Alembic's own command API."""
