"""One exception type for every user-facing error.

The CLI prints ``MechmodError`` messages without a traceback and exits
non-zero; anything else is a bug and keeps its traceback.
"""


class MechmodError(Exception):
    """A problem with the user's input or environment, with a message that
    names the file, case or model concerned and what to do about it."""
