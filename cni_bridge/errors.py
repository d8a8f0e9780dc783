"""One exception type for every failure a user should see, carrying a CNI error code.

Both front doors turn a `PluginError` into their wire format: the CNI front end into an error
object on stdout, the Docker driver into `{"Err": msg}`. Anything that is not a `PluginError`
is a bug and is reported as code 999 with the exception text (never a traceback on stdout).
"""

from __future__ import annotations

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
