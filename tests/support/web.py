"""A web server in a container that says which client address it saw, and the client side:
how the published-port tests check a reach path (tests/runtime/test_docker_ports.py, the reboot
simulation in tests/runtime/test_restart.py).

The container runs busybox httpd with a CGI that prints REMOTE_ADDR; the client is busybox nc
run wherever the test needs it (a namespace, dockerd's host side, a container).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from subprocess import CompletedProcess

from tests.support.docker_scenario import Net, Scenario
from tests.support.netns import Netns

__all__ = ["HTTPD", "from_container", "from_host", "from_ns", "get", "start_web", "wait_listening"]

Runner = Callable[..., CompletedProcess]

# busybox httpd answering /cgi-bin/ip with the client address it saw
HTTPD = ("sh", "-c", "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\n"
         "echo \"$REMOTE_ADDR\"\\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && "
         "exec /bin/busybox httpd -f -p 80 -h /www")


def start_web(dk: Scenario, net: Net | str, *publish: str) -> str:
    """A container on `net` running the web server, with `publish` (e.g. "-p", "8080:80")."""
    name = dk.run(net, *publish, cmd=HTTPD)
    wait_listening(dk, name)
    return name


def wait_listening(dk: Scenario, name: str) -> None:
    deadline = time.monotonic() + 20
    while ":80 " not in dk.exec(name, "/bin/busybox", "netstat", "-ltn", check=False).stdout:
        assert time.monotonic() < deadline, "httpd did not start in the container"
        time.sleep(0.2)


def get(run: Runner, address: str, port: int | str) -> str | None:
    """The client address the container saw, or None when the port does not answer. `run`
    executes argv where the client is. An HTTP request through busybox nc (busybox's static
    wget crashes in its resolver here)."""
    proc = run("sh", "-c", f"printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 4 {address} {port}")
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[0].startswith("HTTP/"):
        return None
    return lines[-1].strip().strip("[]").removeprefix("::ffff:")  # httpd listens on [::]


def from_ns(ns: Netns) -> Runner:
    return lambda *argv: ns.run(*argv, check=False)


def from_host(dk: Scenario) -> Runner:
    return lambda *argv: dk.engine.host_run(*argv, check=False)


def from_container(dk: Scenario, name: str) -> Runner:
    return lambda *argv: dk.exec(name, *argv, check=False)
