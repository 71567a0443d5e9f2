"""An exception class that only worker processes import (see diagnose_tasks.hidden_error):
a caller that never imported this module gets a plain TaskFailed, and get() must not
import it."""


class HiddenError(Exception):
    pass
