"""Level 4: running tasks: executor, consumer, housekeeping, supervisor, metrics, logs."""
