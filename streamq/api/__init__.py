"""Level 3: the public API: the app, tasks, result handles and hooks."""
