"""Isolation: throwaway schemas, the registry that owns them, and migrating sets into them."""
