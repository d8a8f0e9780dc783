"""One exception type for every failure a user should see, carrying a CNI error code.

Both front doors turn a `PluginError` into their wire format: the CNI front end into an error
object on stdout, the Docker driver into `{"Err": msg}`. Anything that is not a `PluginError`
is a bug and is reported as code 999 with the exception text (never a traceback on stdout).
"""

from __future__ import annotations

import reprlib

# Codes fixed by the CNI specification (SPEC.md, "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# Plugin-specific codes (>= 100 per spec).
INTERNAL = 999

ECHO_LIMIT = 100  # characters of a caller's value that an error message quotes back
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, ECHO_LIMIT, ECHO_LIMIT


class PluginError(Exception):
    """A failure with a CNI error code, a one-line message and optional details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


def config_error(msg: str, details: str = "") -> PluginError:
    return PluginError(INVALID_CONFIG, msg, details)


def env_error(msg: str, details: str = "") -> PluginError:
    return PluginError(INVALID_ENV, msg, details)


def shown(value: object, limit: int = ECHO_LIMIT, *, quote: bool = True) -> str:
    """A value the caller sent, as every error message quotes it: its repr (the text itself with
    `quote=False`), cut to `limit` characters with an ellipsis.

    Why one helper: input reaches error texts, and from there Docker's answer, the CNI error
    JSON and the logs. A 1 MB id must come back as ~100 characters, not as 1 MB."""
    if isinstance(value, str):
        cut = value[:limit]
        text = repr(cut) if quote else cut
        if len(value) <= limit:
            return text
        return text[:-1] + "..." + text[-1] if quote else text + "..."
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
