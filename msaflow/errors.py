"""The ground floor's errors: every layer raises these, none of them imports the project.

Both are ``ValueError`` subclasses, so callers that catch ``ValueError`` keep working; the CLI turns
either into one line and exit code 2.
"""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and what was expected."""


class DataError(ValueError):
    """Bad input data. Names the file, the field and what was expected."""

    def __init__(self, path: str | os.PathLike | None, field: str, expected: str):
        self.path, self.field, self.expected = path, field, expected
        super().__init__(f"{path}: {field}: expected {expected}")
