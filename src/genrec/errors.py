"""Errors a user can act on. The CLI prints their message without a traceback."""


class GenrecError(Exception):
    """Base class: bad config, bad input data, a failed validation gate."""


class ConfigError(GenrecError):
    """A config file or override is wrong; the message names the key and the file."""


class InputDataError(GenrecError):
    """Input data is missing or malformed; the message names the file, row or column."""


class ValidationFailed(GenrecError):
    """A data-validation gate stopped the pipeline; the message names the expectations and row counts."""


class StorageError(GenrecError):
    """Writing an output failed (a full disk, a volume gone read-only); the message names the path and what is intact."""
