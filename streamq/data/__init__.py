"""Level 1: data without Redis: the message, serialization, the task record, outcomes."""
