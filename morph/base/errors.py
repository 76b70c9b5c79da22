"""The one exception type for mistakes a user can make and fix.

The CLI prints ``UserError`` as a single line (no traceback) and exits with status 2; every
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message says what, which file, and how to fix it."""
