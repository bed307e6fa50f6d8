"""The lab's database topology for the tests that fail it over: replication as `fab db.replication` reports
it, and the runbook that puts it back to db1 primary / db2 replica afterwards (a swapped, git-ignored copy
of the lab inventory to rebuild db1 as a replica of db2, a failback, a rebuild of db2)."""

from __future__ import annotations

import json
import os
import shutil
import time

import yaml

from roadie.core import inventory, vault
from roadie.core.paths import ROOT
from roadie.db import fencing
from roadie.lab import provision
from tests.lab.fabrun import fab, ok
from tests.lab.hosts import checked

SWAPPED = ROOT / "inventories" / "lab-failover-tmp"   # same depth as inventories/lab: its relative paths hold


def database_hosts(conn) -> list[str]:
    """The addresses in a stream host's STREAM_DATABASE_URL, in order (credentials never leave the host)."""
    netloc = checked(conn, "sed -n 's|^STREAM_DATABASE_URL=[^@]*@\\([^/]*\\)/.*|\\1|p' /srv/stream/shared/stream.env")
    hosts = [part.rsplit(":", 1)[0] for part in netloc.strip().split(",") if part]
    assert hosts, "no STREAM_DATABASE_URL host list in stream.env"
    return hosts


def replication(inv: str = "lab") -> list[dict]:
    return json.loads(ok(fab("db.replication", "--json", inventory=inv)))


def wait_streaming(primary: str, replica: str, inv: str = "lab", timeout: float = 30) -> list[dict]:
    """`fab db.replication --json` rows once `replica` streams from `primary` with no lag (or at the timeout:
    the caller asserts what it needs)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {r["host"]: r for r in replication(inv)}
        streaming = (rows[primary]["role"] == "primary" and rows[replica]["role"] == "replica"
                     and rows[replica]["lag_bytes"] == 0 and rows[replica]["state"] == "streaming"
                     and any(s["slot"] == replica and s["active"] for s in rows[primary]["slots"]))
        if streaming or time.monotonic() > deadline:
            return list(rows.values())
        time.sleep(1)


def swapped_inventory() -> str:
    """inventories/lab with db2 the primary and db1 its replica, git-ignored, at the same directory depth."""
    shutil.rmtree(SWAPPED, ignore_errors=True)
    shutil.copytree(ROOT / "inventories" / "lab", SWAPPED, symlinks=True)
    (SWAPPED / ".gitignore").write_text("*\n")
    hosts = SWAPPED / "hosts.yml"
    data = yaml.safe_load(hosts.read_text())
    db = data["all"]["children"]["database"]["children"]
    db["database_primary"], db["database_replica"] = db["database_replica"], db["database_primary"]
    hosts.write_text(yaml.safe_dump(data, sort_keys=False))
    swapped = inventory.load(SWAPPED)
    assert swapped.groups["database_primary"] == ("db2",) and swapped.groups["database_replica"] == ("db1",)
    return str(SWAPPED)


def unfence_and_clear(conn) -> None:
    checked(conn, f"systemctl unmask {fencing.PG_UNIT} && rm -f {fencing.FENCE_FILE} && "
                  f"rm -rf {fencing.DATA_DIR}")


def restore_topology(conns) -> None:
    """The runbook: rebuild db1 as a replica of db2, fail back to db1, rebuild db2 as its replica."""
    fenced = conns("db1").run(f"test -f {fencing.FENCE_FILE}", hide=True, warn=True, in_stream=False)
    if fenced.exited != 0:
        return   # the failover did not get as far as fencing db1: nothing to put back
    swapped = swapped_inventory()
    # A copy of the lab inventory is not "the lab" to provision.run: name the lab's vault password file.
    previous = os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE")
    os.environ["ANSIBLE_VAULT_PASSWORD_FILE"] = str(vault.LAB_VAULT_PASSWORD_FILE)
    try:
        # The role refuses the fenced host and says why.
        refused = provision.run("database", swapped, limit="db1", echo=False)
        assert not refused.ok and "db1 was fenced at" in refused.output and "by " in refused.output
        unfence_and_clear(conns("db1"))
        rebuilt = provision.run("database", swapped, echo=False)
        assert rebuilt.ok, rebuilt.output[-3000:]
        wait_streaming("db2", "db1", swapped)
        ok(fab("db.failover", "--yes", "--message", "lab test: fail back", inventory=swapped))
    finally:
        shutil.rmtree(SWAPPED, ignore_errors=True)
        if previous is None:
            os.environ.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
        else:
            os.environ["ANSIBLE_VAULT_PASSWORD_FILE"] = previous
    unfence_and_clear(conns("db2"))
    rebuilt = provision.run("database", "lab", echo=False)
    assert rebuilt.ok, rebuilt.output[-3000:]
    # The runbook's last step: the env files list both database hosts again (the failback forgot db2).
    streams = provision.run("stream", "lab", echo=False)
    assert streams.ok, streams.output[-3000:]
    db2_address = inventory.load("lab").host_var("db2", "roadie_private_address")
    for host in ("stream1", "stream2", "stream3"):
        assert db2_address in database_hosts(conns(host))[1:], host
