"""A real etcd cluster for tests: N members of Debian's `etcd` on free loopback ports, each with
its own data directory, started together and torn down (processes killed, data left to tmp_path).

    with etcd_cluster(tmp_path / "etcd", members=3) as cluster:
        cluster.endpoints            # ["http://127.0.0.1:PORT", ...] (client URLs)
        cluster.stop(1)              # kill member 1 (SIGKILL: like a machine that died)
        cluster.start(1)             # start it again on the same ports and data
        cluster.put("/k", "v"); cluster.get_prefix("/pybridge/")   # via the v3 JSON gateway

    with etcd_cluster(tmp_path / "etcd", members=1, tls=True) as cluster:
        cluster.endpoints            # ["https://127.0.0.1:PORT"]: client certificates required
        cluster.tls                  # {"cacert": ..., "cert": ..., "key": ...} (a client's files)

Used by the IPAM etcd store tests and meant for any feature that needs a shared store (the
cluster is private to the caller: its own ports, token and data). Readiness is polled through
the gateway (`/health` per member, then a linearizable read that needs a quorum), never slept.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 60.0


def etcd_missing() -> str | None:
    return None if os.access(ETCD, os.X_OK) else "etcd is not installed (apt-get install etcd-server)"


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def make_certificates(where: Path) -> dict[str, str]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    where.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=where)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=pybridge test CA")
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        (where / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {"cacert": str(where / "ca.pem"), "cert": str(where / "client.pem"), "key": str(where / "client.key")}


def _post(endpoint: str, path: str, body: dict, timeout: float = 5.0, tls: dict[str, str] | None = None) -> dict:
    request = urllib.request.Request(endpoint + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    context = None
    if tls:
        context = ssl.create_default_context(cafile=tls["cacert"])
        context.load_cert_chain(tls["cert"], tls["key"])
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.loads(response.read() or b"{}")


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class EtcdCluster:
    def __init__(self, base: Path, members: int, token: str, tls: bool = False) -> None:
        self.base = base
        self.tls = make_certificates(base / "tls") if tls else None
        self.names = [f"m{i}" for i in range(members)]
        ports = _free_ports(2 * members)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.token = token
        self.procs: dict[int, subprocess.Popen] = {}
        self.started_once: set[int] = set()

    @property
    def endpoints(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://127.0.0.1:{p}" for p in self.client_ports]

    def _peers(self) -> str:
        return ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in zip(self.names, self.peer_ports))

    def start(self, index: int) -> None:
        """Start member `index` (again: same ports, same data directory)."""
        assert index not in self.procs or self.procs[index].poll() is not None, f"member {index} runs"
        data = self.base / self.names[index]
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        client, peer = self.endpoints[index], f"http://127.0.0.1:{self.peer_ports[index]}"
        log = open(self.base / f"{self.names[index]}.log", "ab")
        self.procs[index] = subprocess.Popen(
            [ETCD, "--name", self.names[index], "--data-dir", str(data),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", self._peers(), "--initial-cluster-token", self.token,
             "--initial-cluster-state", "new", "--heartbeat-interval", "50", "--election-timeout", "500",
             "--logger", "zap", "--log-level", "warn", *self._tls_flags()],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.started_once.add(index)

    def _tls_flags(self) -> list[str]:
        if not self.tls:
            return []
        where = self.base / "tls"
        return ["--cert-file", str(where / "server.pem"), "--key-file", str(where / "server.key"),
                "--client-cert-auth", "--trusted-ca-file", str(where / "ca.pem")]

    def stop(self, index: int) -> None:
        """Kill member `index` (SIGKILL, as a lost machine) and reap it."""
        proc = self.procs.get(index)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

    def running(self) -> list[int]:
        return [i for i, proc in self.procs.items() if proc.poll() is None]

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until a quorum answers a linearizable read through every running member."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                for index in self.running():
                    _post(self.endpoints[index], "/v3/kv/range", {"key": _b64("/ready-probe")}, timeout=2.0,
                          tls=self.tls)
                return
            except (OSError, ValueError) as exc:
                last = exc
                for index, proc in self.procs.items():
                    if proc.poll() is not None and index in self.running():
                        raise RuntimeError(f"etcd member {index} exited: see {self.base}")
                time.sleep(0.1)
        raise RuntimeError(f"etcd cluster in {self.base} not ready within {timeout:g}s: {last}")

    # --- direct access for assertions (the v3 JSON gateway, through any live member) -----------
    def _any(self, path: str, body: dict) -> dict:
        last: Exception | None = None
        for index in self.running():
            try:
                return _post(self.endpoints[index], path, body, tls=self.tls)
            except OSError as exc:
                last = exc
        raise RuntimeError(f"no etcd member answered: {last}")

    def put(self, key: str, value: str | bytes) -> None:
        self._any("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        raw = prefix.encode()
        end = raw[:-1] + bytes([raw[-1] + 1])
        answer = self._any("/v3/kv/range", {"key": _b64(raw), "range_end": _b64(end)})
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
                for kv in answer.get("kvs", [])}

    def close(self) -> None:
        for index in list(self.procs):
            self.stop(index)


@contextlib.contextmanager
def etcd_cluster(base: Path, members: int = 3, token: str | None = None, *,
                 tls: bool = False) -> Iterator[EtcdCluster]:
    """A fresh cluster of `members` members under `base`; every member killed on exit. `tls`:
    https client URLs that require a client certificate (`cluster.tls` has a client's files)."""
    base.mkdir(parents=True, exist_ok=True)
    cluster = EtcdCluster(base, members, token or f"pybridge-test-{os.getpid()}-{time.monotonic_ns()}", tls)
    try:
        for index in range(members):
            cluster.start(index)
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.close()
