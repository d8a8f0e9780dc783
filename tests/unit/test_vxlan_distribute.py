"""The etcd side of vxlan peers (cni_bridge/overlay/distribute.py) against an in-memory key
space with etcd's range/txn semantics, the registry in a temporary run dir and the kernel
replaced by a recorder of `reconcile` calls. The real cluster and kernel are in
tests/integration/test_vxlan_etcd.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import locks
from cni_bridge.attachment import Attachment
from cni_bridge.config import parse_network
from cni_bridge.errors import TRY_AGAIN
from cni_bridge.ipam.etcd import KeyValue, StoreUnreachable
from cni_bridge.overlay import distribute, registry
from cni_bridge.overlay.peers import RemoteEndpoint

STORE = {"type": "etcd", "endpoints": ["http://127.0.0.1:2379"], "prefix": "/p"}


class Keys:
    """etcd's key space, as far as distribute uses it: prefix ranges and put/delete txns."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.revision = 1
        self.down = False
        self.txns = 0
        self.leases: set[int] = set()
        self.lease_of: dict[str, int] = {}

    def grant(self, ttl: int) -> int:
        self.next_lease = getattr(self, "next_lease", 100) + 1
        self.leases.add(self.next_lease)
        return self.next_lease

    def keep_alive(self, lease: int) -> int:
        return 30 if lease in self.leases else 0

    def expire(self, lease: int) -> None:
        self.leases.discard(lease)
        for k in [k for k, v in self.lease_of.items() if v == lease]:
            del self.data[k], self.lease_of[k]

    def get_with_revision(self, key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
        if self.down:
            raise StoreUnreachable(TRY_AGAIN, "etcd did not answer")
        return [KeyValue(k, v, 1, 1, self.lease_of.get(k, 0)) for k, v in sorted(self.data.items())
                if k.startswith(key)], self.revision

    def txn(self, compare: Any, success: Any, failure: Any = ()) -> None:
        if self.down:
            raise StoreUnreachable(TRY_AGAIN, "etcd did not answer")
        self.txns += 1
        for op in success:
            if "request_put" in op:
                body = op["request_put"]
                name = base64.b64decode(body["key"]).decode()
                self.data[name] = base64.b64decode(body["value"])
                self.lease_of[name] = int(body.get("lease", 0))
            else:
                body = op["request_delete_range"]
                name = base64.b64decode(body["key"]).decode()
                for k in [k for k in self.data if k == name or ("range_end" in body and k.startswith(name))]:
                    del self.data[k]
        self.revision += 1


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Keys:
    monkeypatch.setattr(locks, "RUN_DIR", str(tmp_path))
    space = Keys()
    monkeypatch.setattr(distribute, "_client_and_prefix", lambda store: (space, store["prefix"]))
    return space


def spec(local: str = "192.0.2.1", vni: int = 42, store: dict | None = STORE) -> Any:
    ipam: dict[str, Any] = {"type": "pybridge-ipam", "ranges": [[{"subnet": "10.9.0.0/24"}]]}
    if store:
        ipam["store"] = store
    return parse_network({"name": "n", "bridge": "brvx", "ipam": ipam, "vxlan": {"vni": vni, "local": local}})


def remote(keys: Keys, vtep: str, name: str, mac: str, ip: str, vni: int = 42) -> None:
    keys.data[distribute.key("/p", vni, vtep, name)] = distribute.value(
        vtep, {"mac": mac, "ips": [ip], "network": "n", "containerId": name, "ifname": "eth0"}).encode()


class Applied:
    def __init__(self) -> None:
        self.calls: dict[int, list[RemoteEndpoint]] = {}

    def __call__(self, vni: int, endpoints: list[RemoteEndpoint]) -> str:
        self.calls[vni] = sorted(endpoints)
        return "changed"


def test_a_round_publishes_the_registry_and_programs_the_remote_set(keys: Keys) -> None:
    s = spec()
    att = Attachment("c1", "eth0", None)
    registry.record(s, att, "02:00:00:00:00:01", [])
    remote(keys, "192.0.2.2", "vethB", "02:00:00:00:00:02", "10.9.0.3")
    applied = Applied()
    result = distribute.sync_once(apply=applied)
    assert result.errors == [] and result.published == 1 and result.withdrawn == 0
    mine = distribute.key("/p", 42, "192.0.2.1", att.host_ifname)
    assert json.loads(keys.data[mine])["mac"] == "02:00:00:00:00:01"
    # the remote set handed to reconcile: the VNI's records as read (reconcile skips our VTEP's)
    assert [(e.mac, str(e.vtep)) for e in applied.calls[42]] == [("02:00:00:00:00:02", "192.0.2.2")]
    assert result.watch[0][1:] == ("/p/vxlan/", 1)
    # nothing changed: no write at all
    before = keys.txns
    assert distribute.sync_once(apply=applied).published == 0 and keys.txns == before


def test_keys_of_gone_attachments_are_withdrawn_and_others_left_alone(keys: Keys) -> None:
    s = spec()
    registry.record(s, Attachment("c1", "eth0", None), "02:00:00:00:00:01", [])
    remote(keys, "192.0.2.1", "vethStale", "02:00:00:00:00:99", "10.9.0.9")  # ours, before a reboot
    remote(keys, "192.0.2.2", "vethB", "02:00:00:00:00:02", "10.9.0.3")      # another host's
    remote(keys, "192.0.2.1", "vethOtherVni", "02:00:00:00:00:98", "10.9.0.8", vni=43)  # not a local VNI
    result = distribute.sync_once(apply=Applied())
    assert result.withdrawn == 1
    assert sorted(keys.data) == sorted([distribute.key("/p", 42, "192.0.2.1", Attachment("c1", "eth0", None).host_ifname),
                                        distribute.key("/p", 42, "192.0.2.2", "vethB"),
                                        distribute.key("/p", 43, "192.0.2.1", "vethOtherVni")])


def test_add_and_del_publish_at_once_and_del_withdraws(keys: Keys) -> None:
    s = spec()
    att = Attachment("c1", "eth0", None)
    entry = registry.record(s, att, "02:00:00:00:00:01", [])
    assert distribute.publish(registry.etcd_store(s), 42, "192.0.2.1", att.host_ifname, entry)
    assert list(keys.data) == [distribute.key("/p", 42, "192.0.2.1", att.host_ifname)]
    assert distribute.publish(registry.etcd_store(s), 42, "192.0.2.1", att.host_ifname, None)
    assert keys.data == {}


def test_etcd_unreachable_leaves_the_kernel_alone_and_is_reported(keys: Keys, capsys: pytest.CaptureFixture) -> None:
    s = spec()
    att = Attachment("c1", "eth0", None)
    entry = registry.record(s, att, "02:00:00:00:00:01", [])
    keys.down = True
    assert not distribute.publish(registry.etcd_store(s), 42, "192.0.2.1", att.host_ifname, entry)
    assert "the next `vxlan sync` round retries" in capsys.readouterr().err
    applied = Applied()
    result = distribute.sync_once(apply=applied)
    assert applied.calls == {} and result.errors and "did not answer" in result.errors[0]
    keys.down = False  # the next round publishes what the ADD could not
    assert distribute.sync_once(apply=applied).published == 1 and 42 in applied.calls


def test_networks_without_an_etcd_store_are_not_distributed(keys: Keys) -> None:
    s = spec(store=None)
    registry.record(s, Attachment("c1", "eth0", None), "02:00:00:00:00:01", [])
    assert registry.etcd_store(s) is None
    applied = Applied()
    assert distribute.sync_once(apply=applied).changes == {} and keys.data == {}
    # the Docker driver's --ipam-store etcd is the default for records without one
    assert 42 in distribute.sync_once(STORE, apply=applied).changes


def test_a_damaged_record_is_skipped(keys: Keys) -> None:
    records = [("/p/vxlan/42/192.0.2.2/a", b"{not json"),
               ("/p/vxlan/42/192.0.2.2/b", json.dumps({"mac": "02:00:00:00:00:02", "vtep": "192.0.2.2"}).encode()),
               ("/p/vxlan/420/192.0.2.2/c", json.dumps({"mac": "02:00:00:00:00:03", "vtep": "192.0.2.2"}).encode())]
    assert [e.mac for e in distribute.endpoints_of(records, 42, "/p")] == ["02:00:00:00:00:02"]


def test_registry_signature_changes_with_add_and_del(keys: Keys) -> None:
    s = spec()
    att = Attachment("c1", "eth0", None)
    empty = registry.signature()
    registry.record(s, att, "02:00:00:00:00:01", [])
    added = registry.signature()
    assert added != empty
    registry.forget(s, att)
    assert registry.signature() == empty


def test_a_vni_that_left_the_registry_is_withdrawn_by_the_loop(keys: Keys) -> None:
    """A Docker endpoint's DEL publishes nothing itself (its network names no store): the loop
    that published the VTEP withdraws it once the last attachment left; retried while etcd is down."""
    s = spec(store=None)
    att = Attachment("c1", "eth0", None)
    registry.record(s, att, "02:00:00:00:00:01", [])
    remote(keys, "192.0.2.2", "vethB", "02:00:00:00:00:02", "10.9.0.3")
    state = distribute.LoopState()
    seen = state.seen
    distribute.sync_once(STORE, apply=Applied(), state=state)
    assert len(keys.data) == 2 and len(seen) == 1
    registry.forget(s, att)
    keys.down = True
    assert distribute.sync_once(STORE, apply=Applied(), state=state).errors and len(seen) == 1
    keys.down = False
    assert distribute.sync_once(STORE, apply=Applied(), state=state).withdrawn == 1
    assert list(keys.data) == [distribute.key("/p", 42, "192.0.2.2", "vethB")] and seen == set()


def test_a_loop_keeps_its_keys_on_a_lease_and_takes_a_new_one_when_it_expired(keys: Keys) -> None:
    s = spec()
    att = Attachment("c1", "eth0", None)
    entry = registry.record(s, att, "02:00:00:00:00:01", [])
    distribute.publish(registry.etcd_store(s), 42, "192.0.2.1", att.host_ifname, entry)  # the ADD: no lease
    mine = distribute.key("/p", 42, "192.0.2.1", att.host_ifname)
    assert keys.lease_of[mine] == 0
    state = distribute.LoopState(ttl=distribute.lease_ttl(10))
    assert state.ttl == 30
    assert distribute.sync_once(apply=Applied(), state=state).published == 1  # same value, now on the lease
    first = keys.lease_of[mine]
    assert first in keys.leases
    assert distribute.sync_once(apply=Applied(), state=state).published == 0
    assert distribute.sync_once(apply=Applied()).published == 0  # a one-shot round leaves the lease alone
    keys.expire(first)  # e.g. the loop was cut off from etcd for longer than the TTL
    assert mine not in keys.data
    assert distribute.sync_once(apply=Applied(), state=state).published == 1
    assert keys.lease_of[mine] not in (0, first)


def test_an_add_between_the_registry_read_and_the_etcd_read_is_not_withdrawn(keys: Keys) -> None:
    s = spec()
    registry.record(s, Attachment("c1", "eth0", None), "02:00:00:00:00:01", [])
    late = Attachment("c2", "eth0", None)
    read = keys.get_with_revision

    def add_meanwhile(key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
        entry = registry.record(s, late, "02:00:00:00:00:02", [])  # the ADD: record, then publish
        distribute.publish(registry.etcd_store(s), 42, "192.0.2.1", late.host_ifname, entry)
        return read(key, prefix=prefix)
    keys.get_with_revision = add_meanwhile  # type: ignore[method-assign]
    assert distribute.sync_once(apply=Applied()).withdrawn == 0
    assert distribute.key("/p", 42, "192.0.2.1", late.host_ifname) in keys.data


def test_multicast_networks_are_not_published(keys: Keys) -> None:
    s = parse_network({"name": "n", "bridge": "brvx",
                       "ipam": {"type": "pybridge-ipam", "ranges": [[{"subnet": "10.9.0.0/24"}]], "store": STORE},
                       "vxlan": {"vni": 42, "local": "192.0.2.1", "group": "239.1.1.1"}})
    assert registry.etcd_store(s) is None
    registry.record(s, Attachment("c1", "eth0", None), "02:00:00:00:00:01", [])
    for default in (None, STORE):  # nor Docker's (the serve's store is the default)
        result = distribute.sync_once(default, apply=Applied())
        assert result.changes == {} and result.errors == [] and keys.data == {}


def test_an_ipv6_vtep_is_published_and_read_back(keys: Keys) -> None:
    s = spec(local="2001:db8::1")
    att = Attachment("c1", "eth0", None)
    registry.record(s, att, "02:00:00:00:00:01", [])
    remote(keys, "2001:db8::2", "vethB", "02:00:00:00:00:02", "fd00::3")
    applied = Applied()
    assert distribute.sync_once(apply=applied).published == 1
    assert distribute.key("/p", 42, "2001:db8::1", att.host_ifname) in keys.data
    assert [(e.mac, str(e.vtep), [str(i) for i in e.ips]) for e in applied.calls[42]] == \
        [("02:00:00:00:00:02", "2001:db8::2", ["fd00::3"])]
    assert distribute.sync_once(apply=applied).published == 0  # its own key recognised as its own
