"""Egress of the stream service, tried on a provisioned stream host.

The service's user (`stream`) may connect to the database hosts on the PostgreSQL port, the cache on the
Redis port and loopback; anything else is rejected at once (a TCP reset, so connect() says "Connection
refused" instead of waiting for a timeout). Root is not restricted: apt still reaches the Debian mirror. The
table survives a reload of the host firewall and a restart of nftables.service (what a boot does).
Connections are made from stream1 as root through `runuser -u stream`, with bash's /dev/tcp; addresses
come from the lab inventory.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

HOST = "stream1"
USER = "stream"
TABLE = "inet roadie_stream_egress"
# A connect that a DROP would leave hanging gives up here (exit 124), so REJECT and DROP are told apart.
CONNECT_TIMEOUT_S = 8


@pytest.fixture(scope="module")
def stream1(conns, provisioned):
    return conns(HOST)


def _address(lab_inventory, host: str) -> str:
    return lab_inventory.host_var(host, "roadie_private_address")


def _connect(conn, address: str, port: int, *, as_user: str | None = USER):
    """Open a TCP connection from the host (as `as_user`, or root for None) and close it again."""
    probe = f"exec 3<>/dev/tcp/{address}/{port}"
    command = f"timeout {CONNECT_TIMEOUT_S} bash -c {shlex.quote(probe)}"
    if as_user:
        command = f"runuser -u {as_user} -- {command}"
    return conn.run(command, hide=True, warn=True, in_stream=False, timeout=CONNECT_TIMEOUT_S + 20)


def _assert_allowed(conn, address: str, port: int):
    result = _connect(conn, address, port)
    assert result.exited == 0, (address, port, result.exited, result.stderr)


def _assert_refused(conn, address: str, port: int):
    result = _connect(conn, address, port)
    assert result.exited == 1 and "Connection refused" in result.stderr, (address, port, result.exited,
                                                                         result.stderr)


@pytest.mark.parametrize("host, port", [("db1", 5432), ("db2", 5432), ("cache1", 6379)])
def test_the_service_user_reaches_the_database_hosts_and_the_cache(stream1, lab_inventory, host, port):
    _assert_allowed(stream1, _address(lab_inventory, host), port)


def test_the_service_user_reaches_loopback(stream1):
    _assert_allowed(stream1, "127.0.0.1", 80)        # nginx on loopback


@pytest.mark.parametrize("host, port", [("lb1", 80), ("db1", 22), ("stream2", 80), ("cache1", 22),
                                        ("db1", 6379), ("cache1", 5432)])
def test_the_service_user_is_refused_anything_else_at_once(stream1, lab_inventory, host, port):
    _assert_refused(stream1, _address(lab_inventory, host), port)


def test_root_is_not_restricted(stream1, lab_inventory):
    # lb1:80 is open to every lab host (the balancer's http service): root gets through where stream is refused.
    result = _connect(stream1, _address(lab_inventory, "lb1"), 80, as_user=None)
    assert result.exited == 0, result.stderr


def test_apt_still_reaches_the_debian_mirror(stream1):
    result = stream1.run("apt-get update", hide=True, warn=True, in_stream=False, timeout=300)
    output = result.stdout + result.stderr
    assert result.exited == 0 and "Err:" not in output and "Failed to fetch" not in output, output[-2000:]


def test_the_rule_matches_the_service_users_uid(stream1):
    uid = stream1.run(f"id -u {USER}", hide=True, in_stream=False).stdout.strip()
    table = stream1.run(f"nft list table {TABLE}", hide=True, in_stream=False).stdout
    assert f"meta skuid {uid} jump stream" in table, table


@pytest.fixture
def docker_dns_kept():
    """The lab's own plumbing, not the host's: Docker resolves names in a container through NAT rules in its
    network namespace, which a flush of the whole ruleset (nftables.service's stop) removes, and the
    container would resolve nothing for the rest of the session. Saved before and put back after, from the
    controller (the container has no iptables)."""
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", f"roadie-{HOST}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    in_netns = ["nsenter", "-t", pid, "-n"]
    saved = subprocess.run([*in_netns, "iptables-save", "-t", "nat"], check=True, capture_output=True,
                           text=True).stdout
    assert "DOCKER_OUTPUT" in saved, saved       # the controller's iptables sees the rules Docker made
    yield
    subprocess.run([*in_netns, "iptables-restore", "-T", "nat"], input=saved, check=True, capture_output=True,
                   text=True)


@pytest.mark.parametrize("how", ["nft -f /etc/nftables.conf", "systemctl restart nftables.service"])
def test_the_table_survives_a_reload_of_the_host_firewall(stream1, lab_inventory, how, docker_dns_kept):
    """The common role's reload (nft -f) and a restart of nftables.service (what a boot runs) keep the table."""
    stream1.run(how, hide=True, in_stream=False, timeout=60)
    listed = stream1.run(f"nft list table {TABLE}", hide=True, warn=True, in_stream=False)
    assert listed.exited == 0, listed.stderr
    _assert_refused(stream1, _address(lab_inventory, "lb1"), 80)
    _assert_allowed(stream1, _address(lab_inventory, "db1"), 5432)
