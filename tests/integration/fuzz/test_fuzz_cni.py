"""Property-based fuzzing of the CNI front end: `handler.handle(plugin, env, stdin)`.

Every outcome must be either success (ADD: a result of the requested version; DEL/CHECK/GC/
STATUS: empty stdout) or a CNI error object with a code from the spec's table that fits the kind
of input -- never code 999 (a Python exception inside the plugin) and never a traceback.

Random input never reaches the kernel: CNI_NETNS is a path that does not exist (or is not
absolute), CNI_PATH a directory that does not exist, names that could reach the host carry the
session prefix, the IPAM dataDir is the test's own. A batch of inputs is bracketed by a host
snapshot; rejected requests are also checked one by one for files written in the dataDir. The
few valid ADDs run against a real namespace of the test and are deleted again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from cni_bridge.cni.handler import IPAM_PLUGIN, PLUGIN, Response, handle
from cni_bridge.cni.protocol import COMMANDS, KNOWN_ARGS, SUPPORTED_VERSIONS, version_tuple
from tests.support.fuzzing import (
    IPAM_HINTS,
    assert_cni_error,
    assert_cni_result,
    files_unchanged_if,
    fuzz,
    host_unchanged,
    json_objects,
    json_values,
    key_junk,
    mutations,
    stdin_bytes,
)
from tests.support.host import NETNS_DIR
from tests.support.host import run as sh
from tests.support.netns import Netns
from tests.support.session import register_data_dir, session, unique_name
from tests.support.subnets import unique_subnet

CONFIG_KEYS = ("cniVersion", "name", "type", "mode", "bridge", "mtu", "isGateway", "ipMasq", "dns",
               "prevResult", "runtimeConfig", "args", "vlanId", "uplink", "master", "hairpinMode")


@dataclasses.dataclass
class World:
    """What the fuzzed requests may name: all of it unique to this pytest run, none of it present
    on the host except the dataDir."""
    tmp: Path
    data_dir: Path
    network: str
    bridge: str
    subnet4: Any
    subnet6: Any
    no_netns: str
    no_bin: str
    fifo: str = ""
    plain_file: str = ""

    def config(self, version: str, **extra: Any) -> dict[str, Any]:
        """A valid pybridge network config (a conflist plugin entry with the list's name and
        version, as libcni hands it to the plugin)."""
        s4 = self.subnet4
        return {
            "cniVersion": version, "name": self.network, "type": "pybridge", "bridge": self.bridge,
            "isGateway": True, "isDefaultGateway": False, "ipMasq": False, "hairpinMode": False, "mtu": 1400,
            "ipam": {"type": "pybridge-ipam", "dataDir": str(self.data_dir),
                     "ranges": [[{"subnet": str(s4), "rangeStart": str(s4[10]), "rangeEnd": str(s4[200]),
                                  "gateway": str(s4[1])}], [{"subnet": str(self.subnet6)}]],
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": str(s4[1])}]},
            "dns": {"nameservers": [str(s4[1])], "search": ["example.org"]},
            **extra,
        }

    def prev_result(self, version: str) -> dict[str, Any]:
        s4 = self.subnet4
        result = {"cniVersion": version,
                  "interfaces": [{"name": self.bridge, "mac": "02:00:00:00:00:01"},
                                 {"name": "veth0123456789a", "mac": "02:00:00:00:00:02"},
                                 {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": self.no_netns}],
                  "ips": [{"interface": 2, "address": f"{s4[20]}/{s4.prefixlen}", "gateway": str(s4[1])}],
                  "routes": [{"dst": "0.0.0.0/0", "gw": str(s4[1])}], "dns": {"nameservers": [str(s4[1])]}}
        if version_tuple(version) < (1, 0, 0):
            result["ips"][0]["version"] = "4"
        return result

    def env(self, command: str, **extra: str) -> dict[str, str]:
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": "fuzz-container-1", "CNI_NETNS": self.no_netns,
                "CNI_IFNAME": "eth0", "CNI_PATH": self.no_bin, "CNI_ARGS": "", **extra}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("fuzz-cni")
    data_dir = register_data_dir(tmp / "data")
    data_dir.mkdir()
    no_netns = str(NETNS_DIR / unique_name("nons"))
    assert not Path(no_netns).exists()
    os.mkfifo(tmp / "fifo")
    (tmp / "file").write_text("not a namespace\n")
    return World(tmp, data_dir, unique_name("fznet"), unique_name("fzbr"), unique_subnet(4), unique_subnet(6),
                 no_netns, str(tmp / "no-such-bin"), str(tmp / "fifo"), str(tmp / "file"))


def run(plugin: str, env: dict[str, str], config: Any, world: World) -> Response:
    """One request; a refused one must not have written to the dataDir."""
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    out: list[Response] = []
    with files_unchanged_if(lambda: out[0].exit_code != 0, world.data_dir):
        out.append(handle(plugin, env, stdin))
    return out[0]


def judge(response: Response, command: str, version: Any, ok: bool, codes: set[int]) -> None:
    """`ok`: success is a legitimate outcome for this input class; `codes`: the legitimate
    error codes."""
    assert response.exit_code in (0, 1), response
    if response.exit_code == 1:
        err = assert_cni_error(response.stdout, codes)
        expected = version if isinstance(version, str) and version in SUPPORTED_VERSIONS else "1.1.0"
        assert err["cniVersion"] == expected, f"error in version {err['cniVersion']} for a {version!r} config"
        return
    assert ok, f"{command} unexpectedly succeeded: {response.stdout!r}"
    if command == "VERSION":
        obj = json.loads(response.stdout)
        assert obj["supportedVersions"] == list(SUPPORTED_VERSIONS) and obj["cniVersion"] in SUPPORTED_VERSIONS
    elif command == "ADD":
        assert_cni_result(json.loads(response.stdout), version)
    else:
        assert response.stdout == b"", response.stdout


# ----- environment ------------------------------------------------------------------------------
ids = st.one_of(st.sampled_from(["fuzz-container-1", "a", "A.b_c-d", "x" * 256]),
                st.text(max_size=30), st.sampled_from(["", "..", "-a", "a/b", "x" * 257, "a b", "é"]))
ifnames = st.one_of(st.sampled_from(["eth0", "net1", "e" * 15]), st.text(max_size=18))
cni_args = st.one_of(
    st.just(""), st.text(max_size=30),
    st.lists(st.tuples(st.sampled_from(KNOWN_ARGS + ("FOO", "", "ignoreunknown")),
                       st.sampled_from(["1", "true", "", "10.0.0.5", "10.0.0.5,fd00::5", "x", "02:00:00:00:00:09",
                                        "01:00:00:00:00:09", "300.1.1.1", "a=b"])),
             max_size=4).map(lambda kv: ";".join(f"{k}={v}" for k, v in kv)))


def netns_paths(world: World) -> st.SearchStrategy[str]:
    """Never a namespace: a missing path under /run/netns, a FIFO, a plain file, a directory, not
    absolute, or junk."""
    return st.one_of(st.just(world.no_netns), st.just(""), st.just(world.no_netns + "\x00x"),
                     st.sampled_from([world.fifo, world.plain_file, str(world.tmp)]),
                     st.text(max_size=20).filter(lambda p: not p.startswith("/")),
                     st.text(max_size=10).map(lambda t: world.no_netns + "/" + t.replace("\x00", "")))


@st.composite
def environments(draw: st.DrawFn, world: World) -> dict[str, str]:
    env = world.env(draw(st.one_of(st.sampled_from(COMMANDS), st.sampled_from(["add", "", "DELETE", "ADD "]),
                                   st.text(max_size=8))))
    for key, strategy in (("CNI_CONTAINERID", ids), ("CNI_IFNAME", ifnames), ("CNI_ARGS", cni_args),
                          ("CNI_NETNS", netns_paths(world))):
        choice = draw(st.sampled_from(["keep", "replace", "drop"]))
        if choice == "replace":
            env[key] = draw(strategy)
        elif choice == "drop":
            del env[key]
    return env


def test_environment(world: World) -> None:
    """Junk CNI_* parameters with a valid config: error 4 (or 7 for a bad MAC in CNI_ARGS)."""

    @fuzz(1800)
    @given(env=environments(world), version=st.sampled_from(SUPPORTED_VERSIONS))
    @example(env=world.env("ADD"), version="1.1.0")  # a missing netns was code 999 (NetnsGone)
    @example(env=world.env("CHECK", CNI_NETNS="/"), version="1.1.0")  # not a netns
    @example(env=world.env("CHECK"), version="0.3.0")  # the error said 1.1.0 to a 0.3.0 runtime
    @example(env=world.env("ADD", CNI_NETNS=world.fifo), version="1.1.0")  # open() of a FIFO: a hang
    def check(env: dict[str, str], version: str) -> None:
        command = env["CNI_COMMAND"]
        config = world.config(version)
        if command == "CHECK":
            config["prevResult"] = world.prev_result(version)
        response = run(PLUGIN, env, config, world)
        if command not in COMMANDS:
            judge(response, command, version, False, {4})
        elif command == "VERSION":
            judge(response, command, version, True, set())
        else:  # no netns exists, so ADD and CHECK cannot succeed; GC/STATUS need 1.1.0
            judge(response, command, version, command in ("DEL", "GC", "STATUS"), {1, 4, 7})

    with host_unchanged(world.data_dir):
        check()


def test_stdin(world: World) -> None:
    """Bytes, non-objects and junk objects on stdin: errors 6 (decode), 1 (version), 7 (config)
    or 4 (the missing netns, once the config is good enough); VERSION always answers."""

    @fuzz(1200)
    @given(command=st.sampled_from(COMMANDS), plugin=st.sampled_from([PLUGIN, IPAM_PLUGIN]),
           stdin=st.one_of(stdin_bytes(CONFIG_KEYS),
                           st.tuples(json_objects(CONFIG_KEYS), st.sampled_from(SUPPORTED_VERSIONS)).map(
                               lambda cv: json.dumps({**cv[0], "cniVersion": cv[1], "name": "fz-junk"}).encode())))
    @example(command="ADD", plugin=PLUGIN, stdin=b'{"cniVersion": "1.0.0", "name": "n", "prevResult": {"interfaces": 5}}')
    def check(command: str, plugin: str, stdin: bytes) -> None:
        assume(not (plugin == IPAM_PLUGIN and command == "DEL"))  # see safe_for_ipam_del
        response = run(plugin, world.env(command), stdin, world)
        try:
            config = json.loads(stdin.decode("utf-8"))
        except ValueError:  # (UnicodeDecodeError is one)
            config = None
        is_object = isinstance(config, dict)
        # No ipam key can come out of the junk (never the default dataDir), so DEL/GC/STATUS
        # of a junk-but-valid config has nothing to do and may succeed.
        judge(response, command, config.get("cniVersion") if is_object else None,
              command in ("VERSION", "DEL", "GC", "STATUS"), {1, 4, 7} if is_object else {6})

    with host_unchanged(world.data_dir):
        check()


def safe_for_ipam_del(config: dict[str, Any]) -> bool:
    """pybridge-ipam DEL frees leases in the dataDir, and a config without one means the system
    default directory: only configs that name ours (or a junk one, refused) are sent."""
    ipam = config.get("ipam")
    return isinstance(ipam, dict) and "dataDir" in ipam


# ----- mutated configs --------------------------------------------------------------------------
def test_config_mutations(world: World) -> None:
    """A valid config with fields replaced by wrong types/values, deleted, or unknown ones added.
    pybridge: ADD and CHECK end at the missing netns at best (4); pybridge-ipam ADD may succeed
    (the lease is released again) -- both must be error 1/7 for what is wrong in the config."""
    junk = key_junk(session().prefix)

    @fuzz(2000)
    @given(command=st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]),
           plugin=st.sampled_from([PLUGIN, PLUGIN, IPAM_PLUGIN]), version=st.sampled_from(SUPPORTED_VERSIONS),
           netns=st.sampled_from([world.no_netns, world.no_netns, world.fifo, world.plain_file]), data=st.data())
    @example(command="ADD", plugin=PLUGIN, version="1.0.0", netns=world.no_netns, data=None)
    def check(command: str, plugin: str, version: str, netns: str, data: Any) -> None:
        base = world.config(version, runtimeConfig={"mac": "02:00:00:00:00:07"},
                            args={"cni": {"ips": [str(world.subnet4[20])]}})
        if command == "CHECK":
            base["prevResult"] = world.prev_result(version)
        config = data.draw(mutations(base, junk), label="config") if data is not None else base
        assume(plugin == PLUGIN or command != "DEL" or safe_for_ipam_del(config))
        env = world.env(command, CNI_NETNS=netns)
        response = run(plugin, env, config, world)
        ipam_add = plugin == IPAM_PLUGIN and command == "ADD"
        success_ok = command in ("VERSION", "DEL", "GC", "STATUS") or ipam_add
        judge(response, command, config.get("cniVersion"), success_ok, {1, 3, 4, 6, 7})
        if ipam_add and response.exit_code == 0:
            release = run(plugin, world.env("DEL"), config, world)
            assert release.exit_code == 0, release.stdout
            assert not [p for p in world.data_dir.rglob("*") if p.name[0].isdigit() or ":" in p.name], \
                "lease left after DEL"

    with host_unchanged(world.data_dir, ignore=IPAM_HINTS):  # accepted pybridge-ipam ADDs leave hints
        check()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["bridge", "macvlan", "ipvlan", "vlan"])
def test_del_never_opens_a_fifo(world: World, mode: str) -> None:
    """Regression: DEL of a sub-link mode opened CNI_NETNS to clean up inside it; a FIFO there
    blocked the plugin forever. DEL now treats a path that cannot be a namespace as gone."""
    config = world.config("1.1.0", mode=mode, master=f"{session().prefix}nolink",
                          **({"vlanId": 7} if mode == "vlan" else {}))
    for netns in (world.fifo, world.plain_file, str(world.tmp)):
        judge(run(PLUGIN, world.env("DEL", CNI_NETNS=netns), config, world), "DEL", "1.1.0", True, set())


def test_prev_result_junk(world: World) -> None:
    """prevResult replaced by junk or a mutated valid one: ADD/CHECK refuse it (7) or get as far
    as the missing netns (4); DEL must clean up whatever prevResult says (success)."""
    junk = key_junk(session().prefix)
    other_junk = st.one_of(json_values, json_objects(("interfaces", "ips", "routes", "dns", "cniVersion")))

    @fuzz(1000)
    @given(command=st.sampled_from(["ADD", "CHECK", "DEL"]), version=st.sampled_from(SUPPORTED_VERSIONS),
           data=st.data())
    @example(command="ADD", version="1.1.0", data=None)
    def check(command: str, version: str, data: Any) -> None:
        prev = world.prev_result(version)
        if data is not None:
            prev = data.draw(mutations(prev, junk) | other_junk, label="prev")
        else:
            prev = {"interfaces": 5}  # was code 999: TypeError in merge_prev after the whole ADD
        config = world.config(version, prevResult=prev)
        response = run(PLUGIN, world.env(command), config, world)
        judge(response, command, version, command == "DEL", {1, 4, 7})  # 1: CHECK before 0.4.0

    with host_unchanged(world.data_dir):
        check()


# ----- the few valid ones, against a real namespace ---------------------------------------------
def test_valid_requests_real_netns(world: World, netns: Callable[..., Netns]) -> None:
    """Valid variations (version, hairpin, masquerade, MAC, static IP) really ADD, CHECK and DEL;
    after the batch the host is as before (the bridge, made by a first ADD, stays until the end)."""
    env = world.env("ADD", CNI_NETNS=str(NETNS_DIR / netns().name), CNI_CONTAINERID="fuzz-valid")
    try:
        warm = run(PLUGIN, env, world.config("1.1.0"), world)
        assert warm.exit_code == 0, warm.stdout
        assert run(PLUGIN, {**env, "CNI_COMMAND": "DEL"}, world.config("1.1.0"), world).exit_code == 0
        valid_batch(world, env)
    finally:
        sh(["ip", "link", "del", world.bridge], check=False)


def valid_batch(world: World, env: dict[str, str]) -> None:
    """ADD (+ CHECK from 0.4.0) + DEL per example; the bridge exists already, so the host
    snapshot around the batch must come out equal."""

    @fuzz(30)
    @given(version=st.sampled_from(SUPPORTED_VERSIONS), hairpin=st.booleans(), masq=st.booleans(),
           mac=st.sampled_from([None, "02:11:22:33:44:55"]), static=st.integers(20, 30) | st.none(),
           ifname=st.sampled_from(["eth0", "net1"]))
    def check(version: str, hairpin: bool, masq: bool, mac: str | None, static: int | None, ifname: str) -> None:
        extra: dict[str, Any] = {"hairpinMode": hairpin, "ipMasq": masq}
        if mac:
            extra["runtimeConfig"] = {"mac": mac}
        config = world.config(version, **extra)
        add_env = {**env, "CNI_IFNAME": ifname,
                   "CNI_ARGS": f"IP={world.subnet4[static]}" if static else ""}
        added = run(PLUGIN, add_env, config, world)
        try:
            judge(added, "ADD", version, True, set())
            result = json.loads(added.stdout)
            if mac:
                assert result["interfaces"][2]["mac"] == mac
            if static:
                assert result["ips"][0]["address"].startswith(f"{world.subnet4[static]}/")
            if version_tuple(version) >= (0, 4, 0):
                checked = run(PLUGIN, {**add_env, "CNI_COMMAND": "CHECK"}, {**config, "prevResult": result}, world)
                judge(checked, "CHECK", version, True, set())
        finally:
            prev = json.loads(added.stdout) if added.exit_code == 0 else None
            deleted = run(PLUGIN, {**add_env, "CNI_COMMAND": "DEL"}, {**config, "prevResult": prev}, world)
            judge(deleted, "DEL", version, True, set())

    with host_unchanged(world.data_dir, ignore=IPAM_HINTS):
        check()
