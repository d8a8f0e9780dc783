"""Typed access to a libnetwork request body, with errors that name the method and field.

libnetwork sends JSON objects; a missing or ill-typed field is a PluginError (code 7) whose text
reaches the user through Docker ("... : NetworkDriver.Join: EndpointID is required"). Values are
quoted back through `errors.shown` only (bounded: a 1 MB field never comes back as 1 MB).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Mapping

from cni_bridge.docker.options import flag as option_flag
from cni_bridge.errors import PluginError, config_error, shown

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class Body:
    def __init__(self, method: str, data: Mapping[str, Any]) -> None:
        self.method = method
        self.data = data

    def _fail(self, msg: str):
        return config_error(f"{self.method}: {msg}")

    def string(self, key: str, *, required: bool = False) -> str:
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                raise self._fail(f"{key} is required")
            return ""
        if not isinstance(value, str):
            raise self._fail(f"{key} must be a string, got {type(value).__name__}")
        return value

    def required_string(self, key: str) -> str:
        return self.string(key, required=True)

    def ident(self, key: str) -> str:
        """A Docker object id (NetworkID, EndpointID): it becomes a file name, so it is checked."""
        value = self.string(key, required=True)
        if not _ID_RE.fullmatch(value) or ".." in value:
            raise self._fail(f"invalid {key} {shown(value)}")
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self._fail(f"{key} must be an object, got {type(value).__name__}")
        return value

    def strings(self, key: str) -> Mapping[str, str]:
        """An object of strings (Go's map[string]string: IPAM Options, AuxAddresses)."""
        value = self.mapping(key)
        for name, item in value.items():
            if not isinstance(item, str):
                raise self._fail(f"{key}[{shown(name)}] must be a string, got {type(item).__name__}")
        return value

    def items(self, key: str) -> list[Mapping[str, Any]]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self._fail(f"{key} must be a list of objects")
        return value

    def boolean(self, key: str) -> bool:
        value = self.data.get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._fail(f"{key} must be a boolean, got {shown(value)}")
        return value

    def flag(self, key: str) -> bool:
        """A boolean Docker option: JSON true/false, or the strings "true"/"false" as -o gives them."""
        try:
            return option_flag(self.data, key)
        except PluginError as exc:
            raise self._fail(exc.msg) from None

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise self._fail(f"{key} must be an integer, got {shown(value)}")
        return value

    def sub(self, key: str) -> "Body":
        return Body(f"{self.method} {key}", self.mapping(key))

    def _parsed(self, key: str, parse: Callable[[str], Any], what: str) -> Any:
        value = self.string(key)
        if not value:
            return None
        if "%" in value:  # fd00::5%x would be a different address (lease) than fd00::5
            raise self._fail(f"{key} {shown(value)} must not carry a zone index")
        try:
            return parse(value)
        except ValueError:
            raise self._fail(f"{key} {shown(value)} is not {what}") from None

    def interface(self, key: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        """An address with prefix length ("10.0.0.2/24"), or None when absent."""
        return self._parsed(key, ipaddress.ip_interface, "an address/prefix")

    def address(self, key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """A bare address; a prefix length is tolerated and dropped."""
        return self._parsed(key, lambda v: ipaddress.ip_interface(v).ip, "an IP address")

    def network(self, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        return self._parsed(key, lambda v: ipaddress.ip_network(v, strict=False), "a subnet (CIDR)")
