"""Lab tests run against the real lab over SSH; the session brings it up if it is not (idempotent)."""

import dataclasses
import hashlib
import os
import time

import pytest

from roadie.core import inventory, ssh, vault
from roadie.core.fleet import Fleet
from roadie.core.paths import ROOT
from roadie.deploy.types import Reporter
from roadie.lab import engine, lab, provision
from tests.lab.fabrun import fab
from tests.lab.traffic import BIG


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab_inventory() -> inventory.Inventory:
    states = lab.status() if engine.docker_running() else []
    if not states or not all(s.ssh for s in states):
        lab.up()
    return inventory.load("lab")


@pytest.fixture(scope="session")
def provisioned(lab_inventory) -> provision.PlaybookRun:
    """site.yml applied to the lab (the first run in a fresh lab is the cold provision)."""
    run = provision.run("site", "lab", echo=False)
    log = ROOT / "logs" / "lab-site.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(run.output)
    failed = {h: c for h, c in run.recap.items() if c.get("failed") or c.get("unreachable")}
    assert run.ok, f"site.yml failed on {failed} (see {log})"
    print(f"\nsite.yml: {run.duration_s:.0f} s, changed {sum(c['changed'] for c in run.recap.values())} tasks")
    return run


@dataclasses.dataclass(frozen=True)
class SiteRun:
    """A site.yml run and its window, a second wider on each side (for journalctl --since/--until)."""

    run: provision.PlaybookRun
    started: float
    ended: float


@pytest.fixture(scope="session")
def site_rerun(provisioned) -> SiteRun:
    """site.yml once more on the provisioned lab, at -vvv: the idempotence test reads its recap, the
    secret-leak test its output and every host's journal of its window (one run serves both)."""
    started = time.time() - 1
    run = provision.run("site", "lab", extra_args=("-vvv",), echo=False)
    (ROOT / "logs" / "lab-site-rerun.log").write_text(run.output)
    return SiteRun(run, started, time.time() + 1)


@pytest.fixture(scope="session")
def secrets() -> dict[str, str]:
    """The lab's vault values, for logging in as the services' users (never printed)."""
    return vault.read(vault.LAB_VAULT_FILE, vault.LAB_VAULT_PASSWORD_FILE)


@pytest.fixture(scope="session")
def conns(lab_inventory):
    """One verified connection per lab host as root, opened on first use: the tests' own view, to look
    at and set up what the product (which logs in as the deploy user) must not be able to touch."""
    opened: dict[str, ssh.HostConnection] = {}

    def get(name: str) -> ssh.HostConnection:
        if name not in opened:
            opened[name] = ssh.connect(dataclasses.replace(lab_inventory.hosts[name], user="root"))
        return opened[name]

    yield get
    for conn in opened.values():
        conn.close()


@pytest.fixture(scope="session")
def as_deploy(lab_inventory, provisioned):
    """One verified connection per lab host as the deploy user, Fabric's account: what an attacker who
    holds the deploy key can do."""
    opened: dict[str, ssh.HostConnection] = {}

    def get(name: str) -> ssh.HostConnection:
        if name not in opened:
            host = lab_inventory.hosts[name]
            assert host.user == "deploy", f"Fabric must log in as deploy, not {host.user}"
            opened[name] = ssh.connect(host)
        return opened[name]

    yield get
    for conn in opened.values():
        conn.close()


@pytest.fixture(scope="session")
def stack(provisioned, lab_inventory):
    """A first release deployed with `fab deploy`'s code and seeded: the stack serves through lb1."""
    from roadie.deploy import deploy

    artifact, manifest = deploy.build_and_deploy(lab_inventory, ROOT / "build" / "releases", "lab tests",
                                                 Reporter(), seed=True)
    fleet = Fleet.from_inventory(lab_inventory)
    return {"manifest": manifest, "artifact": artifact, "fleet": fleet, "lb": fleet.balancer.address}


@pytest.fixture
def big_track(stack, as_deploy):
    """Track 1's audio replaced, on every stream host, by the same 28 MiB of bytes; `fab seed` puts the
    reference file back afterwards. Its sha256."""
    yield from _track_one_replaced(as_deploy)


@pytest.fixture(scope="module")
def big_track_for_module(stack, as_deploy):
    """big_track for every test of a module."""
    yield from _track_one_replaced(as_deploy)


def _track_one_replaced(as_deploy):
    data = os.urandom(BIG)
    local = ROOT / "build" / "big-track.wav"
    local.write_bytes(data)
    names = set()
    for host in ("stream1", "stream2", "stream3"):
        conn = as_deploy(host)
        name = conn.run("ls /srv/stream/shared/media | grep '^tone-01-'", hide=True, in_stream=False).stdout.strip()
        names.add(name)
        conn.put(str(local), f"/srv/stream/shared/media/{name}")
    assert len(names) == 1
    yield hashlib.sha256(data).hexdigest()
    local.unlink()
    assert fab("seed").returncode == 0
