"""Where a device is reached and its labels: the agent's settings, the controller's
checks on Hello, and the store keeping both."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import AgentSettings
from common.errors import ConfigError
from common.settings import load_settings, load_settings_lenient
from controller.api.convert import device_to_pb, identity_from_hello, peer_address
from controller.errors import ProtocolError
from controller.fleet.store import DeviceQuery
from controller.stores import Stores
from inventory.model import DeviceIdentity, DeviceKind
from protos.schoolfleet.v1 import agent_pb2, fleet_pb2


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:198.18.0.5:40122", "198.18.0.5"),
        ("ipv6:[::1]:40122", "::1"),
        ("ipv6:[2001:db8::7]:1", "2001:db8::7"),
        # A dual-stack listener sees IPv4 clients this way.
        ("ipv6:[::ffff:198.18.0.5]:40122", "198.18.0.5"),
        ("ipv6:%5Bfe80::1%25eth0%5D:40122", "fe80::1%eth0"),
        ("unix:/run/schoolfleet.sock", ""),
        ("ipv4:nonsense:1", ""),
        ("", ""),
    ],
)
def test_the_address_in_grpcs_peer_string(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def hello(**fields: object) -> agent_pb2.Hello:
    base: dict[str, object] = {
        "device_id": "p1",
        "kind": fleet_pb2.DEVICE_KIND_PANEL,
        "school_id": "s1",
    }
    return agent_pb2.Hello(**{**base, **fields})  # type: ignore[arg-type]


def test_a_device_is_reached_where_its_stream_comes_from_unless_it_names_an_address() -> None:
    assert identity_from_hello(hello(), "ipv4:198.18.0.5:1").address == "198.18.0.5"
    named = identity_from_hello(hello(management_address="198.19.0.9"), "ipv4:198.18.0.5:1")
    assert named.address == "198.19.0.9"
    assert identity_from_hello(hello(), "unix:/x").address == ""


def test_labels_are_kept_sorted() -> None:
    identity = identity_from_hello(hello(labels={"wing": "north", "grade": "5"}))
    assert identity.labels == (("grade", "5"), ("wing", "north"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"management_address": "panel.local"}, "Hello.management_address 'panel.local' is not"),
        ({"management_address": "0.0.0.0"}, "Hello.management_address '0.0.0.0' is not an"),
        ({"labels": {f"l{n}": "x" for n in range(33)}}, "Hello.labels: 33 labels, at most 32"),
        ({"labels": {"-x": "1"}}, "Hello.labels: label name '-x' is not 1-64 of"),
        ({"labels": {"a" * 65: "1"}}, "Hello.labels: label name"),
        ({"labels": {"a": "x" * 129}}, "Hello.labels: label a is longer than 128 characters"),
        ({"labels": {"a": "x\ny"}}, "Hello.labels: label a has a control character"),
    ],
)
def test_a_hello_with_a_bad_address_or_labels_is_refused(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        identity_from_hello(hello(**fields), "ipv4:198.18.0.5:1")
    assert str(caught.value).startswith(message)
    assert caught.value.status == "INVALID_ARGUMENT"


def test_the_store_keeps_address_and_labels_until_the_next_hello(both_stores: Stores) -> None:
    store = both_stores
    first = DeviceIdentity(
        "p1", DeviceKind.PANEL, "s1", "r1", address="198.18.0.5", labels=(("grade", "5"),)
    )
    store.devices.device_connected(first, 1, 90.0, 1000.0)
    got = store.devices.get_device("p1", 1000.0)
    assert got is not None and got.identity == first
    wire = device_to_pb(got)
    assert (wire.address, dict(wire.labels)) == ("198.18.0.5", {"grade": "5"})
    moved = DeviceIdentity("p1", DeviceKind.PANEL, "s1", "r1", address="198.18.0.6")
    store.devices.device_connected(moved, 2, 90.0, 1001.0)
    [listed] = store.devices.list_devices(DeviceQuery(), 1001.0)
    assert (listed.identity.address, listed.identity.labels) == ("198.18.0.6", ())


def agent_file(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'device_id = "p1"\nkind = "panel"\nschool_id = "s1"\n{extra}\n')
    return path


def test_the_agent_sends_what_its_settings_say(tmp_path: Path) -> None:
    path = agent_file(
        tmp_path, 'management_address = "198.18.3.4"\nlabels = ["wing=north", "grade=5"]'
    )
    s = load_settings(AgentSettings, path=path, env_prefix="X_", environ={})
    assert s.management_address == "198.18.3.4"
    assert s.label_pairs() == (("grade", "5"), ("wing", "north"))
    # A value may hold "=" itself: only the first one separates.
    assert AgentSettings("p1", DeviceKind.PANEL, "s1", labels=("k=a=b",)).label_pairs() == (
        ("k", "a=b"),
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('management_address = "panel-1.school"', "'management_address' 'panel-1.school' is not"),
        ('labels = ["grade"]', "'labels' is wrong: label 'grade' must be written NAME=VALUE"),
        ('labels = ["=5"]', "'labels' is wrong: label name '' is not 1-64 of"),
        ('labels = ["a=1", "a=2"]', "'labels' is wrong: label a is given twice"),
    ],
)
def test_a_bad_address_or_label_in_the_agents_file_is_a_config_problem(
    tmp_path: Path, extra: str, message: str
) -> None:
    path = agent_file(tmp_path, extra)
    with pytest.raises(ConfigError) as caught:
        load_settings(AgentSettings, path=path, env_prefix="X_", environ={})
    assert f"config {path}: {message}" in str(caught.value)
    settings, problems = load_settings_lenient(
        AgentSettings, path=path, env_prefix="X_", environ={}
    )
    assert (settings.management_address, settings.labels) == ("", ())
    assert len(problems) == 1
    assert message in problems[0]
    assert problems[0].endswith(("using the default ''", "using the default []"))
