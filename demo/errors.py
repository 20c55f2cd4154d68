"""The demos' one error: a start that cannot go on. Its message is one line for the
person who typed `make demo...`; the entry points print it, never a traceback."""


class DemoError(Exception):
    """The demo could not start; the message says why and, where it can, what to do."""
