"""User-facing errors.

Anything a user can fix (a bad file, a missing dataset, an unknown name) raises a subclass of
``AutopeftError`` whose message names the problem and what to do. The CLI prints those messages
without a traceback; any other exception is a bug and keeps its traceback.
"""


class AutopeftError(Exception):
    """An error caused by user input or environment, with an actionable message."""


class ConfigError(AutopeftError):
    """A search space, config file or option is invalid."""


class DataError(AutopeftError):
    """A task's data cannot be found or read."""


class ModelError(AutopeftError):
    """A base model cannot be resolved or loaded, or cannot take a PEFT config."""
