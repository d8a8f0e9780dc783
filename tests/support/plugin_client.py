"""The pybridge Docker driver's Flask app called the way libnetwork's plugin client calls it
(POST, Docker's content type, a JSON body), in-process through Flask's test client.

Why in-process: the protocol and IPAM tests need no socket and no kernel, so they run without
root; the served process is tested through `tests.support.dockerd.plugin_call` instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cni_bridge.docker.app import create_app
from cni_bridge.docker.context import Settings
from cni_bridge.ipam.lease import parse_lease_name
from tests.support.dockerd import DOCKER_CT, driver_settings

__all__ = ["DOCKER_CT", "GATEWAY_OPTS", "Plugin", "plugin_for"]

# RequestAddress options with which dockerd asks for a network's gateway address.
GATEWAY_OPTS = {"RequestAddressType": "com.docker.network.gateway"}


class Plugin:
    """Calls like libnetwork's plugin client: POST, Docker's content type, JSON body."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client, self.settings = client, settings

    def raw(self, method: str, data: bytes | str, content_type: str = DOCKER_CT) -> tuple[int, Any, str]:
        resp = self.client.post(f"/{method}", data=data, content_type=content_type)
        return resp.status_code, json.loads(resp.get_data(as_text=True)), resp.content_type

    def call(self, method: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        status, payload, _ = self.raw(method, "" if body is None else json.dumps(body))
        return status, payload

    def ok(self, method: str, body: Any = None) -> dict[str, Any]:
        status, payload = self.call(method, body)
        assert status == 200 and "Err" not in payload, payload
        return payload

    def err(self, method: str, body: Any = None) -> str:
        status, payload = self.call(method, body)
        assert status == 500 and set(payload) == {"Err"}, payload
        return payload["Err"]

    def leases(self) -> dict[str, str]:
        out = {}
        for path in self.settings.ipam_data_dir.rglob("*"):
            if parse_lease_name(path.name) is not None:
                out[path.name] = json.loads(path.read_text())["container_id"]
        return out


def plugin_for(tmp_path: Path, default_pool4: str = "10.213.252.0/22") -> Plugin:
    """A driver app with its state and leases under `tmp_path` (see `driver_settings`)."""
    settings = driver_settings(tmp_path, default_pool4)
    return Plugin(create_app(settings).test_client(), settings)
