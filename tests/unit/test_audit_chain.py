"""roadie.change.audit: records go through the root helper's exact sudo line; `fab audit` finds tampering.

The lock host is simulated by running the real helper (roles/common/files/roadie_audit.py) in a
temporary directory, so what the client sends and what it verifies are what a host would write.
"""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from invoke import Context, Exit

from roadie.change import audit, lock
from roadie.core import inventory, ssh
from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT
from roadie.deploy import deploy
from tests.unit.audit_program import EVIDENCE, KEY, helper
from tests.unit.cli_run import fab_task


class LockHost:
    """A lock host whose `sudo -n /usr/local/sbin/roadie-audit append` runs the real helper in `log_dir`."""

    def __init__(self, log_dir: Path, sudo_allowed: bool = True) -> None:
        self.log_dir, self.sudo_allowed = log_dir, sudo_allowed
        self.commands: list[str] = []
        self.inventory_host = SimpleNamespace(name="lb1")
        self.closed = False

    def run(self, command, **kwargs):
        self.commands.append(command)
        if command == "sudo -n /usr/local/sbin/roadie-audit append":
            if not self.sudo_allowed:
                return SimpleNamespace(exited=1, stdout="", stderr="sudo: a password is required\n")
            data = kwargs["in_stream"].read().encode()
            try:
                line = helper.append(helper.parse_record(data), EVIDENCE, log_dir=str(self.log_dir),
                                     owner_uid=os.getuid())
            except helper.Refused as exc:
                return SimpleNamespace(exited=1, stdout="", stderr=f"roadie-audit: {exc}\n")
            return SimpleNamespace(exited=0, stdout=line + "\n", stderr="")
        if "/var/log/roadie/audit.log" in command and "cat" in command:
            path = self.log_dir / "audit.log"
            return SimpleNamespace(exited=0, stdout=path.read_text() if path.exists() else "", stderr="")
        raise AssertionError(f"unexpected command on the lock host: {command}")

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def host(tmp_path):
    return LockHost(tmp_path / "fleet")


@pytest.fixture
def local(tmp_path):
    return tmp_path / "local" / "audit.log"


def make_log(host, local, n=5) -> list[str]:
    for i in range(n):
        audit.record(host, audit.event(["deploy", "drain", "run", "seed", "db.restore-check"][i % 5], result="ok",
                                       release=f"r{i}", hosts=["stream1"]), local=local)
    return (host.log_dir / "audit.log").read_text().splitlines()


# ------------------------------------------------------------------ recording
def test_record_goes_through_the_exact_sudo_line_and_keeps_the_written_line_locally(host, local):
    written = audit.record(host, audit.event("deploy", result="ok", release="r1", hosts=["stream1"],
                                             duration_s=12.34), local=local)
    assert host.commands == ["sudo -n /usr/local/sbin/roadie-audit append"]
    assert written["ssh_key"] == KEY and written["sudo_user"] == "deploy" and written["seq"] == 1
    assert written["duration_s"] == 12.3 and written["who"] == lock.who() and written["action"] == "deploy"
    fleet = (host.log_dir / "audit.log").read_text()
    assert local.read_text() == fleet                     # the operator's copy is the fleet's line, byte for byte
    assert json.loads(fleet) == written


def test_a_refused_record_fails_the_call_and_is_kept_locally_with_the_reason(tmp_path, local):
    denied = LockHost(tmp_path / "fleet", sudo_allowed=False)
    with pytest.raises(RoadieError, match=r"lb1: could not append to the audit log /var/log/roadie/audit.log: "
                                          r"sudo: a password is required \(the deploy user needs the sudo rule"):
        audit.record(denied, audit.event("drain", result="ok"), local=local)
    kept = json.loads(local.read_text())
    assert kept["action"] == "drain" and kept["not_recorded_on"] == "lb1" and "prev" not in kept
    assert not (tmp_path / "fleet" / "audit.log").exists()


def test_a_record_over_the_helpers_limit_is_refused_before_the_host(host, local):
    with pytest.raises(RoadieError, match="over 65536 bytes; nothing recorded"):
        audit.record(host, audit.event("run", result="ok", command="x" * 70_000), local=local)
    assert host.commands == [] and not local.exists()


def test_a_record_claiming_the_hosts_fields_is_refused_by_the_helper(host, local):
    with pytest.raises(RoadieError, match="may not set fields this host adds: ssh_key"):
        audit.record(host, audit.event("deploy", result="ok", ssh_key="SHA256:forged"), local=local)


# ------------------------------------------------------------------ the chain
def test_an_untouched_log_verifies(host, local):
    lines = make_log(host, local)
    assert audit.verify(lines, audit.local_lines(local)) is None
    assert audit.verify([], []) is None


def _edit(line: str, **changes) -> str:
    record = json.loads(line)
    record.update(changes)
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def test_an_edited_record_is_named(host, local):
    lines = make_log(host, local)
    lines[1] = _edit(lines[1], result="failed")           # a past record rewritten, still valid JSON
    broken = audit.check_chain(lines)
    assert (broken.line, broken.record["seq"], broken.record["action"]) == (2, 2, "drain")
    assert broken.reason.startswith("edited")
    text = broken.describe("lb1")
    assert text.startswith("audit log on lb1 is broken at line 2 (record 2 ") and "drain by " in text
    assert "\n" not in text


def test_an_edited_first_record_is_named(host, local):
    lines = make_log(host, local)
    lines[0] = _edit(lines[0], who="mallory@nowhere")
    assert (audit.check_chain(lines).line, audit.check_chain(lines).record["who"]) == (1, "mallory@nowhere")


def test_a_deleted_record_is_named(host, local):
    lines = make_log(host, local)
    del lines[2]
    broken = audit.check_chain(lines)
    assert broken.line == 3 and broken.reason == "record 3 deleted before it (it is number 4)"
    first = make_log(LockHost(host.log_dir.parent / "other"), local.parent / "other.log")[1:]
    assert audit.check_chain(first).reason == "record 1 deleted before it (it is number 2)"


def test_an_inserted_record_is_named_even_when_it_copies_the_chain(host, local):
    lines = make_log(host, local)
    forged = _edit(lines[1], seq=3, prev=audit.line_hash(lines[1]), action="rollback", who="mallory@nowhere")
    lines.insert(2, forged)                               # a well-formed record between 2 and 3
    broken = audit.check_chain(lines)
    assert (broken.line, broken.record["action"]) == (3, "rollback") and broken.reason.startswith("inserted")
    careless = make_log(LockHost(host.log_dir.parent / "other"), local.parent / "other.log")
    careless.insert(2, _edit(careless[1], seq=3, action="rollback"))   # its prev is the line it was copied from
    broken = audit.check_chain(careless)
    assert (broken.line, broken.record["action"]) == (3, "rollback") and broken.reason.startswith("inserted")


def test_a_line_that_is_not_a_record_is_named(host, local):
    lines = make_log(host, local)
    lines.insert(3, "hello")
    assert (audit.check_chain(lines).line, audit.check_chain(lines).record) == (4, None)


def test_an_edited_or_cut_tail_is_found_against_the_operators_copy(host, local):
    lines = make_log(host, local)
    mine = audit.local_lines(local)
    edited = lines[:-1] + [_edit(lines[-1], result="ok", release="r-other")]
    assert audit.check_chain(edited) is None              # a chain cannot show its own last line changed
    broken = audit.verify(edited, mine)
    assert (broken.line, broken.record["release"]) == (5, "r-other") and broken.reason.startswith("edited")
    cut = lines[:-2]
    assert audit.check_chain(cut) is None
    broken = audit.verify(cut, mine)
    assert broken.line == 4 and broken.reason.startswith("missing")


def test_lines_recorded_against_another_log_are_not_taken_for_tampering(host, local, tmp_path):
    lines = make_log(host, local)
    other_local = tmp_path / "staging.log"
    make_log(LockHost(tmp_path / "staging"), other_local, n=8)     # another inventory, a longer log
    failed = json.dumps({"action": "drain", "not_recorded_on": "lb1"})
    assert audit.verify(lines, audit.local_lines(other_local) + [failed] + audit.local_lines(local)) is None


def test_review_reads_the_whole_log_and_shows_the_last_records(host, local):
    make_log(host, local, n=7)
    seen = audit.review(host, last=3, local=local)
    assert seen.host == "lb1" and seen.total == 7 and seen.broken is None
    assert [r["seq"] for r in seen.records] == [5, 6, 7]
    rows = audit.table_rows(seen.records)
    assert [len(r) for r in rows] == [len(audit.HEADERS)] * 3
    assert rows[0][audit.HEADERS.index("ssh key")] == KEY and rows[0][audit.HEADERS.index("sudo")] == "deploy"
    with pytest.raises(RoadieError, match="--last must be at least 1"):
        audit.review(host, last=0, local=local)


# ------------------------------------------------------------------ one host contract
def test_the_helpers_paths_and_limits_are_the_clients_and_the_roles():
    tasks = yaml.safe_load((ROOT / "roles/common/tasks/audit.yml").read_text())
    installed = next(t["ansible.builtin.copy"] for t in tasks if "ansible.builtin.copy" in t)
    directory = next(t["ansible.builtin.file"] for t in tasks if "ansible.builtin.file" in t)
    assert installed["src"] == "roadie_audit.py" and installed["dest"] == audit.HELPER
    assert (installed["owner"], installed["group"], installed["mode"]) == ("root", "root", "0755")
    assert (directory["path"], directory["owner"], directory["mode"]) == (helper.LOG_DIR, "root", "0755")
    assert f"{helper.LOG_DIR}/{helper.LOG_NAME}" == audit.LOG_PATH
    assert f"sudo -n {audit.HELPER} append" == audit.APPEND_COMMAND
    assert (audit.MAX_RECORD, audit.GENESIS) == (helper.MAX_RECORD, helper.GENESIS)
    main = yaml.safe_load((ROOT / "roles/common/tasks/main.yml").read_text())
    assert any(t.get("ansible.builtin.import_tasks") == "audit.yml" and "common_audit" in t["tags"] for t in main)


# ------------------------------------------------------------------ fab run and fab seed record on the fleet
@pytest.fixture
def lab_lock_host(host, local, monkeypatch):
    monkeypatch.setattr(audit, "LOCAL_LOG", local)
    connected = []

    def connect(h):
        connected.append(h.name)
        return host

    monkeypatch.setattr(ssh, "connect", connect)
    host.connected = connected
    return host


def test_fab_run_records_the_command_and_every_hosts_result(lab_lock_host, monkeypatch):
    results = {"stream1": ssh.HostResult("stream1", True, 0, "ok\n"),
               "stream2": ssh.HostResult("stream2", False, 3, "", "boom\n"),
               "stream3": ssh.HostResult("stream3", False, None, error="stream3 (10.0.0.3:22): unreachable")}
    monkeypatch.setattr(ssh, "run_parallel", lambda hosts, command, timeout: results)
    with pytest.raises(Exit, match="2 of 3 hosts failed"):
        fab_task("run")(Context(), "systemctl is-active stream", group="stream", inventory_="lab", yes=True)
    assert lab_lock_host.connected == ["lb1"] and lab_lock_host.closed
    rec = json.loads((lab_lock_host.log_dir / "audit.log").read_text())
    assert rec["action"] == "run" and rec["command"] == "systemctl is-active stream" and rec["result"] == "failed"
    assert rec["hosts"] == ["stream1", "stream2", "stream3"] and rec["failed"] == ["stream2", "stream3"]
    assert rec["exit"] == {"stream1": 0, "stream2": 3, "stream3": None}
    assert rec["errors"] == {"stream3": "stream3 (10.0.0.3:22): unreachable"} and rec["ssh_key"] == KEY


def test_fab_seed_takes_the_lock_and_records(lab_lock_host, monkeypatch):
    taken = []

    def acquire(conn, operation, release="", message="", **kwargs):
        taken.append(operation)
        return SimpleNamespace(release=lambda: taken.append("released"), replaced=None, info=None, state_dir="")

    monkeypatch.setattr(lock, "acquire", acquire)
    monkeypatch.setattr(deploy, "seed_fleet", lambda fleet, report: taken.append("seeded"))
    fab_task("seed")(Context(), inventory_="lab")
    assert taken == ["seed", "seeded", "released"]
    rec = json.loads((lab_lock_host.log_dir / "audit.log").read_text())
    assert (rec["action"], rec["result"], rec["hosts"]) == ("seed", "ok", ["stream1", "stream2", "stream3"])


def test_fab_audit_fails_with_one_line_naming_the_broken_record(lab_lock_host, local, capsys):
    lines = make_log(lab_lock_host, local)
    fab_task("audit")(Context(), inventory_="lab", last="2")
    out = capsys.readouterr().out
    assert KEY in out and "lb1: 5 records, hash chain intact" in out
    (lab_lock_host.log_dir / "audit.log").write_text("\n".join([lines[0], _edit(lines[1], result="failed"),
                                                                *lines[2:]]) + "\n")
    with pytest.raises(Exit) as failed:
        fab_task("audit")(Context(), inventory_="lab", last="20", json=True)
    assert failed.value.code == 1
    assert failed.value.message.startswith("error: audit log on lb1 is broken at line 2 (record 2 ")
    assert "\n" not in failed.value.message
    shown = json.loads(capsys.readouterr().out)
    assert [r["seq"] for r in shown] == [1, 2, 3, 4, 5]



def test_a_failed_change_whose_record_is_refused_reports_both(tmp_path, local, monkeypatch):
    from roadie.deploy import maintenance

    denied = LockHost(tmp_path / "fleet", sudo_allowed=False)
    monkeypatch.setattr(audit, "LOCAL_LOG", local)
    monkeypatch.setattr(ssh, "connect", lambda h: denied)
    monkeypatch.setattr(lock, "acquire", lambda *a, **k: SimpleNamespace(release=lambda: None, replaced=None, info=None,
                                                                       state_dir=""))
    with pytest.raises(RoadieError) as failed, \
            maintenance.Guarded(inventory.load("lab"), "drain", hosts=["stream2"]):
        raise RoadieError("stream2 still has 3 sessions")
    assert str(failed.value).startswith("stream2 still has 3 sessions (and lb1: could not append to the audit log")
    assert denied.closed and json.loads(local.read_text())["error"] == "stream2 still has 3 sessions"
