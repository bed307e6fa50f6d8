"""`fab deploy` against the lab under client traffic: success, broken release, lost host, lock, bad input."""

import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from roadie.change import lock
from roadie.core import ssh
from roadie.core.paths import ROOT
from roadie.deploy import deploy, release, stream_host, wheelhouse
from roadie.deploy.types import DEFAULT_KEEP, Options, Reporter
from roadie.lab import engine, lab
from tests.lab.fabrun import fab, ok, one_line_error, popen_fab
from tests.lab.releases import break_health, build_variant, currents
from tests.lab.traffic import Traffic


@pytest.fixture
def fleet(stack):
    return stack["fleet"]


def test_deploy_under_traffic_switches_every_host_with_no_failed_request(stack, fleet, tmp_path):
    artifact = build_variant(tmp_path, f"lab-next-{int(time.time())}")
    new_id = release.verify(artifact).release_id
    with Traffic(stack["lb"]) as traffic:
        result = fab("deploy", "--artifact", str(artifact), "--yes", "--drain-timeout", "10")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert set(currents(fleet).values()) == {new_id}
    assert traffic.report.failed == 0, traffic.report.failures
    assert "stream1: healthy on" in result.stdout and "batch 1/3 (canary)" in result.stdout
    entries = [json.loads(x) for x in (ROOT / "logs" / "audit.log").read_text().splitlines()]
    assert entries[-1]["action"] == "deploy" and entries[-1]["result"] == "ok"
    assert entries[-1]["release"] == new_id


def test_broken_release_is_rolled_back_on_the_canary_with_no_failed_request(stack, fleet, tmp_path):
    before = currents(fleet)
    artifact = build_variant(tmp_path, f"lab-broken-{int(time.time())}", break_health)
    with Traffic(stack["lb"]) as traffic:
        result = fab("deploy", "--artifact", str(artifact), "--yes", "--health-timeout", "15")
    line = one_line_error(result)
    assert "stream1" in line and "health gate failed" in line
    assert currents(fleet) == before
    assert traffic.report.failed == 0, traffic.report.failures
    assert "rolled back to" in result.stdout
    with ssh.connect(fleet.balancer) as conn:
        assert lock.status(conn)[0] is None


def test_host_lost_mid_deploy_stops_the_deploy_and_a_later_deploy_succeeds(stack, fleet, tmp_path):
    artifact = build_variant(tmp_path, f"lab-lost-{int(time.time())}")
    proc = popen_fab("deploy", "--artifact", str(artifact), "--yes", "--json", "--health-timeout", "20",
                     "--drain-timeout", "5", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stopped = False
    lines = []
    for line in proc.stdout:
        lines.append(line)
        event = json.loads(line)
        if not stopped and event.get("event") == "batch" and "stream2" in event.get("message", ""):
            engine.docker("stop", "-t", "1", engine.container_name("stream2"))
            stopped = True
    proc.wait(timeout=600)
    stderr = proc.stderr.read()
    try:
        assert stopped, "".join(lines)[-2000:]
        assert proc.returncode == 1
        assert "stream2" in stderr and "deploy of" in stderr
        with ssh.connect(fleet.balancer) as conn:
            assert lock.status(conn)[0] is None, "the lock must be released when a deploy fails"
        with Traffic(stack["lb"], max_seconds=5) as traffic:
            time.sleep(3)
        assert traffic.report.failed == 0, traffic.report.failures
    finally:
        engine.docker("start", engine.container_name("stream2"))
        lab.up(log=lambda _m: None)
    again = fab("deploy", "--artifact", str(artifact), "--yes")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert set(currents(fleet).values()) == {release.verify(artifact).release_id}


def _holder(fleet) -> lock.LockInfo | None:
    """Who holds the deploy lock now, read on the lock host."""
    with ssh.connect(fleet.balancer) as conn:
        return lock.status(conn)[0]


def test_concurrent_deploy_is_refused_and_a_forced_unlock_is_audited(stack, fleet):
    before = currents(fleet)
    with ssh.connect(fleet.balancer) as conn:
        lock.acquire(conn, "deploy", "other-release", "someone else's deploy", owner="alice@laptop")
    result = fab("deploy", "--artifact", str(stack["artifact"]), "--yes")
    line = one_line_error(result)
    assert "held by alice@laptop for deploy other-release" in line
    assert currents(fleet) == before                                  # refused before any host changed
    assert _holder(fleet).owner == "alice@laptop"                    # and alice's lock left as it was
    status = fab("lock.status")
    assert "held by alice@laptop" in status.stdout
    broken = fab("lock.release", "--force", "--message", "alice's laptop died")
    assert broken.returncode == 0 and "broken" in broken.stdout
    assert _holder(fleet) is None
    audit = fab("audit", "--json", "--last", "1")
    entry = json.loads(audit.stdout)[0]
    assert entry["action"] == "unlock" and entry["result"] == "forced" and entry["previous_owner"] == "alice@laptop"


def test_corrupt_artifact_is_refused_before_any_host_changes(stack, fleet, tmp_path):
    before = currents(fleet)
    corrupt = tmp_path / "corrupt.tar.gz"
    data = bytearray(Path(stack["artifact"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    one_line_error(fab("deploy", "--artifact", str(corrupt), "--yes"))
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(bytes(data[: len(data) // 3]))
    one_line_error(fab("deploy", "--artifact", str(truncated), "--yes"))
    assert currents(fleet) == before


def test_bad_deploy_input_is_one_line_and_changes_nothing(stack, fleet, tmp_path):
    before = currents(fleet)
    assert "unknown release 'no-such-release'" in one_line_error(fab("deploy", "--release", "no-such-release",
                                                                     "--yes"))
    assert "impossible with 3 hosts" in one_line_error(fab("deploy", "--artifact", str(stack["artifact"]),
                                                           "--min-serving", "3", "--yes"))
    no_stream = tmp_path / "inv"
    no_stream.mkdir()
    (no_stream / "hosts.yml").write_text("all:\n  children:\n    balancer:\n      hosts:\n        lb1:\n"
                                         "          ansible_host: 10.87.0.10\n")
    shutil.copytree(ROOT / "inventories" / "lab" / "group_vars", no_stream / "group_vars",
                    ignore=shutil.ignore_patterns("vault.yml"))
    assert "has no group 'stream'" in one_line_error(fab("deploy", "--inventory", str(no_stream),
                                                         "--artifact", str(stack["artifact"]), "--yes"))
    assert "--batch" in one_line_error(fab("deploy", "--artifact", str(stack["artifact"]), "--batch", "0", "--yes"))
    assert currents(fleet) == before


def test_rollback_returns_to_the_previous_release(stack, fleet, tmp_path):
    before = set(currents(fleet).values())
    assert len(before) == 1, f"the fleet runs more than one release before the test: {before}"
    target = before.pop()
    artifact = build_variant(tmp_path, f"lab-rollback-{int(time.time())}")
    ok(fab("deploy", "--artifact", str(artifact), "--yes"))
    states = deploy.host_releases(fleet)
    assert {s.current for s in states} == {release.verify(artifact).release_id}
    assert {s.previous for s in states} == {target}
    result = fab("rollback", "--yes")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert set(currents(fleet).values()) == {target}
    listing = fab("releases", "--json")
    assert {r["current"] for r in json.loads(listing.stdout)} == {target}


def _venv_links(fleet) -> dict[str, dict[str, str]]:
    """host -> {release: the name in /srv/stream/venvs its venv links to}, and "*" -> the venvs there."""
    script = ("cd /srv/stream && for r in releases/*; do [ -L $r/venv ] && echo $r $(readlink $r/venv); done; "
              "echo '* '$(ls venvs)")
    found = {}
    for host in fleet.stream:
        with ssh.connect(host) as conn:
            lines = conn.run(script, hide=True, in_stream=False).stdout.splitlines()
        found[host.name] = {a.removeprefix("releases/"): b.rsplit("/", 1)[-1]
                            for a, _, b in (line.partition(" ") for line in lines)}
    return found


def test_releases_share_one_venv_per_dependency_set_and_unused_ones_are_pruned(stack, fleet, tmp_path):
    # A wheel no requirement asks for changes the dependency set (so the venv) without a download.
    extra = tmp_path / "wheels"
    shutil.copytree(wheelhouse.wheelhouse(ROOT / "app" / "requirements.txt"), extra)
    (extra / "zz_unused-1.0-py3-none-any.whl").write_bytes(b"PK never installed")
    stamp = int(time.time())
    other = build_variant(tmp_path, f"lab-deps-{stamp}", wheels=extra)
    first, second = (build_variant(tmp_path, f"lab-same-{stamp}-{n}") for n in (1, 2))
    report = Reporter(stream=io.StringIO())
    for artifact in (other, first, second):
        deploy.deploy(fleet, artifact, release.verify(artifact), Options(keep=2, message="venv test"),
                      report)
    keys = {wheelhouse.dependencies(a).key for a in (other, first, second)}
    assert len(keys) == 2
    for host, links in _venv_links(fleet).items():
        one, two = links[f"lab-same-{stamp}-1"], links[f"lab-same-{stamp}-2"]
        assert one == two and one.startswith(wheelhouse.dependencies(first).key), (host, links)
        # keep=2: the deps-changed release is pruned, and with it the venv only it used.
        assert f"lab-deps-{stamp}" not in links, (host, links)
        assert links["*"].split() == sorted({v for k, v in links.items() if k != "*"}), (host, links)
    assert set(currents(fleet).values()) == {f"lab-same-{stamp}-2"}


OLD_MARK = 946684800        # 2000-01-01 (epoch seconds): older than the completion mark of any real release


def test_a_deploy_keeps_the_retention_count_and_prunes_the_oldest_releases(stack, fleet, as_deploy, conns, tmp_path):
    stamp = int(time.time())
    # Complete releases older than every real one, planted on each stream host as the deploy user (the
    # account that writes release payloads): one more than the deploy keeps.
    planted = [f"lab-old-{stamp}-{n}" for n in range(DEFAULT_KEEP + 1)]
    plant = " && ".join(f"mkdir {stream_host.RELEASES / name} && "
                        f"touch -d @{OLD_MARK + n} {stream_host.RELEASES / name / stream_host.COMPLETE_MARK}"
                        for n, name in enumerate(planted))
    artifact = build_variant(tmp_path, f"lab-keep-{stamp}")
    new_id = release.verify(artifact).release_id
    try:
        for host in fleet.stream:
            planting = as_deploy(host.name).run(plant, hide=True, warn=True, in_stream=False)
            assert planting.exited == 0, planting.stderr
        before = {s.host: s for s in deploy.host_releases(fleet)}
        ok(fab("deploy", "--artifact", str(artifact), "--yes"))             # the default retention
        for state in deploy.host_releases(fleet):
            old = before[state.host]
            assert old.kept[:len(planted)] == planted, old                  # the planted ones are the oldest
            assert len(state.kept) == DEFAULT_KEEP, state
            assert state.current == new_id and state.previous == old.current and state.previous in state.kept, state
            removed = [r for r in old.kept if r not in state.kept]
            # Oldest first: the oldest release went, and no newer release went while an older one stayed.
            assert planted[0] in removed, (removed, state.kept)
            assert set(removed) <= set(planted) or not set(planted) & set(state.kept), (removed, state.kept)
            # Gone from the disk, not only from the list.
            gone = conns(state.host).run(" && ".join(f"test ! -e {stream_host.RELEASES / r}" for r in removed),
                                         hide=True, warn=True, in_stream=False)
            assert gone.exited == 0, (state.host, removed)
    finally:
        leftovers = " ".join(str(stream_host.RELEASES / name) for name in planted)
        for host in fleet.stream:
            as_deploy(host.name).run(f"rm -rf {leftovers}", hide=True, warn=True, in_stream=False)
