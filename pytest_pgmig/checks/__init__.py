"""Migration checks: down files that undo their ups, migrations that can run twice."""
