"""The error a user can fix by changing what they passed."""
from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input a user can fix (an option, a file, a field of it); the message names it.

    The ``oddsparse`` commands print it as one line, ``oddsparse COMMAND: error: MESSAGE``, and exit with
    status 2, as for a missing file (:func:`oddsparse.cli.report_bad_input`); library callers get a ValueError.
    """
