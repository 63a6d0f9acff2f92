"""The base of errors caused by what the user gave (a name, a profile, a folder).

The command-line entry points report them in one line with exit code 2, without
a traceback; anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    pass


class NightInterrupted(Exception):
    """Not an error: a night stopped on request between frames; the ledger holds
    everything finished so far and the night resumes from it."""
