"""Level 0: errors, the key schema, ids, settings and backoff. Imports nothing else of streamq."""
