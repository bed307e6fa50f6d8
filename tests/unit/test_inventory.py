"""Inventory parsing of the three shipped inventories and of bad ones."""

from pathlib import Path

import pytest

from roadie.core import inventory
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.paths import INVENTORIES, ROOT

GROUPS = {"balancer", "stream", "database", "database_primary", "database_replica", "cache"}


@pytest.mark.parametrize("name", inventory.NAMED_INVENTORIES)
def test_every_shipped_inventory_has_the_tiers(name):
    inv = inventory.load(name)
    assert set(inv.groups) >= GROUPS
    for group in GROUPS:
        assert inv.group(group), f"{name}: group {group} is empty"
    assert set(inv.group("database")) == set(inv.group("database_primary")) | set(inv.group("database_replica"))
    assert len(inv.group("database_primary")) == 1


@pytest.mark.parametrize("name", inventory.NAMED_INVENTORIES)
def test_connection_settings_check_host_keys(name):
    inv = inventory.load(name)
    for host in inv.hosts.values():
        assert host.port == 22
        assert host.known_hosts.is_absolute()
        assert host.known_hosts.is_relative_to(ROOT)


def test_lab_connection_settings():
    inv = inventory.load("lab")
    lb1 = inv.hosts["lb1"]
    assert lb1.address == "10.87.0.10"
    assert lb1.user == "deploy"                                 # Fabric: the operations account
    assert inv.host_var("lb1", "ansible_user") == "root"       # Ansible: the lab's bootstrap account
    assert lb1.key_file == ROOT / ".lab" / "ssh" / "id_ed25519"
    assert lb1.known_hosts == ROOT / ".lab" / "ssh" / "known_hosts"
    assert lb1.groups == ("balancer",)
    assert inv.hosts["db2"].groups == ("database", "database_replica")


def test_production_uses_deploy_user_and_pinned_known_hosts():
    inv = inventory.load("production")
    host = inv.hosts["db1.production.stream.internal"]
    assert host.user == "deploy"
    assert host.address == "db1.production.stream.internal"
    assert host.key_file is None
    assert host.known_hosts == INVENTORIES / "production" / "known_hosts"


def test_select_by_group_host_and_list_keeps_inventory_order():
    inv = inventory.load("lab")
    assert [h.name for h in inv.select("stream")] == ["stream1", "stream2", "stream3"]
    assert [h.name for h in inv.select("lb1,stream2,lb1")] == ["lb1", "stream2"]
    assert [h.name for h in inv.select("database")] == ["db1", "db2"]


@pytest.mark.parametrize("pattern", ["nosuchhost", "stream,nosuch", "", "stream,,db1"])
def test_unknown_or_empty_names_fail_with_one_line(pattern):
    with pytest.raises(RoadieError) as err:
        inventory.load("lab").select(pattern)
    assert "\n" not in str(err.value)


def test_env_variable_chooses_the_inventory(monkeypatch):
    monkeypatch.setenv("ANSIBLE_INVENTORY", str(INVENTORIES / "staging"))
    assert inventory.load().name == "staging"
    monkeypatch.delenv("ANSIBLE_INVENTORY")
    assert inventory.load().name == "lab"


def _write(tmp_path: Path, text: str, known_hosts: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "hosts.yml").write_text(text)
    if known_hosts:
        vars_dir = tmp_path / "group_vars" / "all"
        vars_dir.mkdir(parents=True)
        (vars_dir / "vars.yml").write_text("roadie_known_hosts_file: '{{ inventory_dir }}/known_hosts'\n")
    return tmp_path


@pytest.mark.parametrize("text, expected", [
    ("all: [unclosed", "inventory"),
    ("all:\n  hosts:\n    a:\n      ansible_host: 10.0.0.1\n    b:\n      ansible_host: 10.0.0.1\n",
     "share the address"),
    ("all:\n  hosts:\n    a:\n      ansible_host: 'bad address!'\n", "bad address"),
    ("all:\n  hosts:\n    a:\n      ansible_port: 70000\n", "bad ansible_port"),
    ("all:\n  hosts: {}\n", "no hosts"),
])
def test_bad_inventories_fail_with_one_line(tmp_path, text, expected):
    with pytest.raises(RoadieError) as err:
        inventory.load(_write(tmp_path, text))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_host_without_known_hosts_setting_is_refused(tmp_path):
    with pytest.raises(RoadieError, match="host keys are always checked"):
        inventory.load(_write(tmp_path, "all:\n  hosts:\n    a:\n", known_hosts=False))


def test_missing_inventory_path():
    with pytest.raises(RoadieError, match="not found"):
        inventory.load("/nonexistent/inventory")


@pytest.mark.parametrize("address", ["db1.example.internal\n", "10.0.0.1\n"])
def test_an_address_with_a_trailing_newline_is_refused(tmp_path, address):
    text = f"all:\n  hosts:\n    a:\n      ansible_host: {address!r}\n".replace("'", '"')
    with pytest.raises(RoadieError, match="bad address") as err:
        inventory.load(_write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_the_fleet_is_the_stream_hosts_behind_the_first_balancer():
    names = ["lb1", "lb2", "stream1", "stream2", "db1"]
    hosts = {n: inventory.Host(n, f"10.0.0.{i}", 22, "deploy", Path("/dev/null")) for i, n in enumerate(names, 1)}
    inv = inventory.Inventory(Path("/x/lab"), hosts, {"balancer": ("lb1", "lb2"), "stream": ("stream1", "stream2")})
    fleet = Fleet.from_inventory(inv)
    assert [h.name for h in fleet.stream] == ["stream1", "stream2"] and fleet.balancer.name == "lb1"
    assert Fleet.from_inventory(inv, partial=True) == fleet
    bare = inventory.Inventory(Path("/x/db"), {"db1": hosts["db1"]}, {"database": ("db1",)})
    with pytest.raises(RoadieError, match="inventory db has no group 'stream'"):
        Fleet.from_inventory(bare)
    assert Fleet.from_inventory(bare, partial=True) == Fleet(stream=[], balancer=None)


def test_the_lease_ttl_comes_from_the_inventory_and_a_bad_one_stops_the_load_in_one_line(tmp_path):
    assert Fleet.from_inventory(inventory.load("lab")).lease_ttl == 30          # the lab's, shorter for its tests
    assert Fleet.from_inventory(inventory.load("production")).lease_ttl == inventory.DEFAULT_LEASE_TTL
    hosts = ("all:\n  children:\n    balancer:\n      hosts:\n        lb1:\n          ansible_host: 10.0.0.1\n"
             "    stream:\n      hosts:\n        stream1:\n          ansible_host: 10.0.0.2\n")
    for i, (good, want) in enumerate((("45", 45), ('"120"', 120))):
        inv = inventory.load(_write(tmp_path / f"good{i}", hosts + f"  vars:\n    roadie_lease_ttl: {good}\n"))
        assert Fleet.from_inventory(inv).lease_ttl == want
        assert Fleet.from_inventory(inv, partial=True).lease_ttl == want
    # Every command loads the inventory first: a bad value stops it there, before any host is contacted.
    for i, bad in enumerate(("5", "7200", "true", "1.5", "soon", "-30", '"²"')):
        with pytest.raises(RoadieError, match="roadie_lease_ttl must be whole seconds from 10 to 3600") as err:
            inventory.load(_write(tmp_path / f"bad{i}", hosts + f"  vars:\n    roadie_lease_ttl: {bad}\n"))
        assert "\n" not in str(err.value)
