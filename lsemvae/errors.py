"""One error family for everything a user can get wrong.

Messages say which file / record / lead / field is wrong, what was found and what to do.
The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LSEMVAEError(Exception):
    """Base class of user-facing errors (bad input, bad config). Printed without traceback."""


class ConfigError(LSEMVAEError, ValueError):
    """A configuration file or value is invalid. The message names the file and field."""


class RecordError(LSEMVAEError, ValueError):
    """One ECG record cannot be used. Batch jobs report and skip it; the rest goes on.

    ``record`` names the record (path or id) and ``reason`` is a short machine-friendly
    category (for counts in summaries, e.g. ``"missing-lead"``, ``"nan-share"``).
    """

    def __init__(self, record: str, message: str, *, reason: str = "invalid"):
        self.record = str(record)
        self.reason = reason
        self.detail = message
        super().__init__(f"{self.record}: {message}")


class LeadError(RecordError):
    """A lead name is unknown, duplicated or missing."""

    def __init__(self, record: str, message: str, *, reason: str = "lead"):
        super().__init__(record, message, reason=reason)
