"""The lab's address plan, its generated inventory and known_hosts lines."""

import ipaddress

import pytest
import yaml

from roadie.core import inventory
from roadie.core.errors import RoadieError
from roadie.lab import engine, keys, lab


def test_committed_lab_inventory_follows_the_address_plan():
    inv = inventory.load("lab")
    assert {h.name: h.address for h in inv.hosts.values()} == lab.address_plan(3)
    lab.check_lab_inventory(inv)


def test_address_plan_for_24_stream_hosts_is_distinct_and_inside_the_subnet():
    plan = lab.address_plan(24)
    assert len(plan) == 28
    assert len(set(plan.values())) == 28
    for address in plan.values():
        ip = ipaddress.ip_address(address)
        assert ip in lab.SUBNET and ip not in (lab.SUBNET.network_address, lab.GATEWAY)
    assert plan["stream24"] == "10.87.0.124"


@pytest.mark.parametrize("count", [0, 2, 65, "3", 3.5])
def test_stream_count_out_of_range_is_refused(count):
    with pytest.raises(RoadieError, match="--stream-hosts"):
        lab.address_plan(count)


def test_extra_stream_inventory_adds_only_the_hosts_beyond_three(tmp_path):
    assert lab.extra_stream_inventory(3) is None
    data = lab.extra_stream_inventory(5)
    assert data == {"all": {"children": {"stream": {"hosts": {
        "stream4": {"ansible_host": "10.87.0.104"}, "stream5": {"ansible_host": "10.87.0.105"}}}}}}


def test_extra_inventory_merges_into_the_lab_inventory(tmp_path):
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    src = inventory.INVENTORIES / "lab"
    (lab_dir / "hosts.yml").write_text((src / "hosts.yml").read_text())
    (lab_dir / "group_vars").mkdir()
    (lab_dir / "group_vars" / "all.yml").write_text((src / "group_vars" / "all" / "vars.yml").read_text())
    extra = lab_dir / "zz-lab-extra-stream.yml"
    lab.write_extra_stream_inventory(24, extra)
    assert yaml.safe_load(extra.read_text())["all"]["children"]["stream"]["hosts"]["stream24"]
    inv = inventory.load(lab_dir)
    assert [h.name for h in inv.group("stream")] == [f"stream{i}" for i in range(1, 25)]
    assert {h.name: h.address for h in inv.hosts.values()} == lab.address_plan(24)
    lab.write_extra_stream_inventory(3, extra)
    assert not extra.exists()


def test_lab_inventory_outside_the_subnet_is_refused():
    host = inventory.Host("x", "192.0.2.5", 22, "root", lab.LAB_KNOWN_HOSTS)
    with pytest.raises(RoadieError, match="not a host address"):
        lab.check_lab_inventory(inventory.Inventory(lab.LAB_INVENTORY, {"x": host}))


def test_known_hosts_lines_name_host_and_address_per_key():
    lines = keys.known_hosts_lines({
        "lb1": ("10.87.0.10", 22, ["ssh-ed25519 AAAAC3Nza root@lb1", "ecdsa-sha2-nistp256 AAAAE2Vj root@lb1"]),
        "db1": ("10.87.0.20", 2222, ["ssh-rsa AAAAB3Nz root@db1"]),
    })
    assert lines == [
        "[db1]:2222,[10.87.0.20]:2222 ssh-rsa AAAAB3Nz",
        "lb1,10.87.0.10 ecdsa-sha2-nistp256 AAAAE2Vj",
        "lb1,10.87.0.10 ssh-ed25519 AAAAC3Nza",
    ]


def test_known_hosts_lines_load_in_paramiko(tmp_path):
    import paramiko

    pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(keys.known_hosts_lines({"lb1": ("10.87.0.10", 22, [pub])})) + "\n")
    loaded = paramiko.HostKeys(str(path))
    assert loaded.lookup("10.87.0.10")["ssh-ed25519"].get_base64() == pub.split()[1]
    assert loaded.lookup("lb1") is not None


def test_garbage_host_key_is_refused():
    with pytest.raises(RoadieError, match="unexpected public host key"):
        keys.known_hosts_lines({"lb1": ("10.87.0.10", 22, ["Permission denied"])})


def test_recipe_hash_is_stable_and_names_the_image():
    assert engine.recipe_hash() == engine.recipe_hash()
    assert engine.image_tag().startswith("roadie-lab:base-")
    assert "openssh-server" in engine.image_packages()
