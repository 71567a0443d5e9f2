"""Level 2: the server. The only layer that imports redis; it knows no tasks."""
