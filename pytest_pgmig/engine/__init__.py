"""The migration engine: discovery, planning, applying and tracking; usable without pytest."""
