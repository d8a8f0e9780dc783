"""`cni-bridge vm` as an operator runs it, with a test's own config, state and record
directories, and a CNI bridge network written into that config directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.cli import cli
from tests.support.cnitool import CniTool
from tests.support.session import unique_name
from tests.support.subnets import unique_subnet

__all__ = ["Vm", "cni_network"]


class Vm:
    """`cni-bridge vm` with this test's config, state and record directories."""

    def __init__(self, tmp_path: Path, state_dir: Path | None = None) -> None:
        self.conf_dir = tmp_path / "net.d"
        self.conf_dir.mkdir(exist_ok=True)
        self.port_dir = tmp_path / "vm-ports"
        self.state_dir = state_dir or tmp_path / "no-docker"

    def where(self) -> list[str]:
        return ["--cni-conf-dir", str(self.conf_dir), "--state-dir", str(self.state_dir),
                "--port-dir", str(self.port_dir)]

    def attach(self, network: str, *options: str, env: dict[str, str] | None = None, check: bool = True):
        proc = cli("vm", "attach", network, *self.where(), *options, env=env)
        if check:
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout)
        return proc

    def detach(self, network: str, tap: str) -> None:
        proc = cli("vm", "detach", network, *self.where(), "--name", tap)
        assert proc.returncode == 0, proc.stderr

    def ls(self) -> list[dict[str, Any]]:
        proc = cli("vm", "ls", "--json", "--port-dir", str(self.port_dir))
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def cleanup(self) -> None:
        """Detach what a failed test left (the records name them; the configs are still there)."""
        for port in self.ls():
            cli("vm", "detach", port["network"], *self.where(), "--name", port["tap"])

    def sources(self, data_dir: Path) -> list[str]:
        return ["--conf-dir", str(self.conf_dir), "--data-dir", str(data_dir), "--state-dir", str(self.state_dir),
                "--port-dir", str(self.port_dir), "--cni-cache-dir", str(self.port_dir.parent / "no-cache")]


def cni_network(vm: Vm, cni: CniTool, **options: Any) -> dict[str, Any]:
    conf = {"cniVersion": "1.1.0", "name": unique_name("net"),
            "plugins": [{"type": "pybridge", "bridge": unique_name("br"), "isGateway": True, "ipMasq": True,
                         **options, "ipam": {"type": "pybridge-ipam", "dataDir": str(cni.data_dir),
                                             "ranges": [[{"subnet": str(unique_subnet(4, 24))}]]}}]}
    (vm.conf_dir / f"10-{conf['name']}.conflist").write_text(json.dumps(conf))
    return conf
