class TlpipeError(Exception):
    """A problem the user can fix: the message names the file or key and the fix.

    Stage scripts print it without a traceback and exit non-zero.
    """
