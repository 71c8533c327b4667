"""The errors that mean "the user's input or settings are wrong", as opposed to a bug in sft.

Each message names what is wrong (key, file and line or record, field) and what to do instead.
"""


class UserError(ValueError):
    """Bad input or settings; the entry points print the message alone."""


class ConfigError(UserError):
    """A configuration that cannot work; the message says which keys and what to change."""


class DataError(UserError):
    """Bad user data: the message names the file, the line or record, the field and what was expected."""
