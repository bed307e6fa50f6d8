"""What fab tasks call in roadie/: input checked and the question asked before any host changes, the
lines and rows they print, and the one line they fail with. No host is contacted."""

import io
import json
import secrets
from types import SimpleNamespace

import pytest
from invoke import Context, Exit

import fabfile
from roadie.cache import client as redis_client
from roadie.cache import commands as cache_commands
from roadie.change import audit, lock, lock_ops
from roadie.core import cli, fleet, ssh
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host
from roadie.db import backups as db_backups
from roadie.db import commands as db_commands
from roadie.db import failover as db_failover
from roadie.db import replication as db_replication
from roadie.db import restore_check as db_restore
from roadie.deploy import artifacts, deploy, maintenance, stream_fleet
from roadie.status import oncall, ops, probe, report
from tests.unit.fakes import RecordedChange, ScriptedTerminal


@pytest.fixture
def guarded(monkeypatch):
    RecordedChange.entered = []
    monkeypatch.setattr(maintenance, "Guarded", RecordedChange)
    return RecordedChange.entered


@pytest.fixture
def no_ssh(monkeypatch):
    monkeypatch.setattr(ssh, "connect", lambda host: pytest.fail(f"connected to {host.name}"))


# ------------------------------------------------------------------ roadie.core.cli
@pytest.mark.parametrize("seconds, shown", [
    (0, "0 s"), (119.9, "119 s"), (120, "2 min"), (7199, "119 min"), (7200, "2 h"), (172799, "47 h"),
    (172800, "2 d"), (90 * 86400, "90 d"),
])
def test_human_age(seconds, shown):
    assert cli.human_age(seconds) == shown


def test_confirm_with_yes_asks_nothing(monkeypatch):
    monkeypatch.setattr("builtins.input", lambda prompt: pytest.fail("asked"))
    cli.confirm("flush 3 keys", True)


def test_confirm_without_a_terminal_needs_yes(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    with pytest.raises(RoadieError, match=r"^flush 3 keys: pass --yes to confirm \(no terminal to ask on\)$"):
        cli.confirm("flush 3 keys", False)


@pytest.mark.parametrize("answer, confirmed", [("yes", True), (" yes ", True), ("y", False), ("", False)])
def test_confirm_on_a_terminal_takes_only_yes(answer, confirmed, monkeypatch):
    monkeypatch.setattr("sys.stdin", SimpleNamespace(isatty=lambda: True))
    prompts = []
    monkeypatch.setattr("builtins.input", lambda prompt: prompts.append(prompt) or answer)
    if confirmed:
        cli.confirm("flush 3 keys", False)
    else:
        with pytest.raises(RoadieError, match="not confirmed; nothing changed"):
            cli.confirm("flush 3 keys", False)
    assert prompts == ["flush 3 keys? type 'yes' to go on: "]


def test_terminal_prefixes_lines_with_their_host(capsys):
    cli.Terminal().say("deleted 3 keys\nsecond line", "cache1")
    cli.Terminal().say("plain")
    assert capsys.readouterr().out == "cache1: deleted 3 keys\ncache1: second line\nplain\n"


# ------------------------------------------------------------------ a task's RoadieError
def test_a_task_that_fails_exits_1_with_one_error_line_and_touches_no_host(no_ssh):
    with pytest.raises(Exit) as failed:
        fabfile.ns["lock.release"].body(Context())
    assert failed.value.code == 1
    assert failed.value.message == "error: breaking another operator's lock needs --force"


# ------------------------------------------------------------------ roadie.deploy.stream_fleet
def test_options_turn_the_flags_into_numbers():
    opts = stream_fleet.options("25%", True, "2", "30", "45.5", None)
    assert (opts.batch, opts.canary, opts.min_serving, opts.drain_timeout, opts.health_timeout, opts.message) == (
        "25%", True, 2, 30.0, 45.5, "")


@pytest.mark.parametrize("bad", [{"min_serving": "x"}, {"drain_timeout": "soon"}, {"health_timeout": ""}])
def test_options_refuse_what_is_no_number(bad):
    flags = {"batch": "1", "canary": False, "min_serving": "1", "drain_timeout": "60", "health_timeout": "60",
             "message": "", **bad}
    with pytest.raises(RoadieError, match="^bad number: "):
        stream_fleet.options(**flags)


@pytest.fixture(scope="module")
def lab():
    from roadie.core import inventory
    return inventory.load("lab")


def test_only_stream_hosts_have_a_balancer_in_front(lab):
    assert stream_fleet.stream_balancer(lab, "stream2").name == "lb1"
    with pytest.raises(RoadieError, match="db1 is not a stream host"):
        stream_fleet.stream_balancer(lab, "db1")
    with pytest.raises(RoadieError, match="unknown host 'nosuch' in inventory lab"):
        stream_fleet.stream_balancer(lab, "nosuch")


def test_seed_never_runs_against_production(guarded, no_ssh):
    with pytest.raises(RoadieError, match="never runs against production"):
        stream_fleet.seed("production")
    assert guarded == []


@pytest.fixture
def shipped(monkeypatch):
    """An artifact that resolves without building, and a deploy.deploy that records instead of deploying."""
    calls = []
    manifest = SimpleNamespace(release_id="r7")
    monkeypatch.setattr(artifacts, "resolve", lambda rid, art, build: ("/tmp/r7.tar.gz", manifest))
    monkeypatch.setattr(deploy, "deploy", lambda fleet, path, manifest, options, report, dry_run: calls.append(
        ([h.name for h in fleet.stream], path, manifest.release_id, options.batch, dry_run)) or "outcome")
    return calls


def _deploy(terminal, **flags):
    args = {"release_id": None, "artifact": None, "build": False, "batch": "1", "canary": True, "min_serving": "1",
            "drain_timeout": "30", "health_timeout": "60", "message": None, "dry_run": False, "as_json": False,
            **flags}
    return stream_fleet.deploy_release("lab", terminal=terminal, **args)


def test_a_deploy_asks_before_it_changes_anything(shipped):
    with pytest.raises(RoadieError, match="not confirmed"):
        _deploy(ScriptedTerminal(answer=False))
    assert shipped == []
    terminal = ScriptedTerminal()
    assert _deploy(terminal, batch="2") == "outcome"
    assert terminal.asked == ["deploy r7 to 3 stream hosts"]
    assert shipped == [(["stream1", "stream2", "stream3"], "/tmp/r7.tar.gz", "r7", "2", False)]


def test_a_bad_deploy_plan_fails_before_the_question(shipped):
    terminal = ScriptedTerminal()
    with pytest.raises(RoadieError, match="--min-serving 3 is impossible with 3 hosts"):
        _deploy(terminal, min_serving="3")
    assert terminal.asked == [] and shipped == []


def test_a_dry_run_deploy_asks_nothing(shipped):
    terminal = ScriptedTerminal(answer=False)
    _deploy(terminal, dry_run=True)
    assert terminal.asked == [] and shipped[0][-1] is True


# ------------------------------------------------------------------ roadie.status.oncall
def test_check_names_the_hosts_that_failed(monkeypatch):
    rows = [fleet.CheckRow("stream1", "10.0.0.1", True, "stream1"),
            fleet.CheckRow("stream2", "10.0.0.2", False, "unreachable"),
            fleet.CheckRow("db1", "10.0.0.5", False, "host key mismatch")]
    monkeypatch.setattr(fleet, "check", lambda inv, group: rows if group == "all" else rows[:1])
    assert oncall.check("lab", "all").problem == "2 of 3 hosts failed: stream2, db1"
    assert oncall.check("lab", "stream1").problem == ""


def _row(host, healthy=True):
    return probe.HostStatus(host, ["stream"], True, services={"stream.service": "active" if healthy else "failed"})


@pytest.mark.parametrize("rows, problems, as_json, line", [
    ([_row("stream1")], [], False, ""),
    ([_row("stream1"), _row("stream2", False)], [], False, "1 of 2 hosts need attention: stream2"),
    ([_row("stream1")], [report.Problem(report.WARNING, "lb1", "x")], False, "1 problem (above)"),
    ([_row("stream1", False)],
     [report.Problem(report.CRITICAL, "db1", "x"), report.Problem(report.WARNING, None, "y")], True,
     "1 of 1 hosts need attention: stream1; 2 problems (1 CRITICAL) (in the JSON)"),
])
def test_status_says_in_one_line_what_needs_attention(rows, problems, as_json, line):
    assert oncall.attention_line(report.Report(rows, problems), as_json) == line


def test_disk_problem_names_full_filesystems_and_silent_hosts():
    rows = [ops.DiskRow("db1", "/", 100, 90, 10, 90.0), ops.DiskRow("db1", "/var", 100, 50, 50, 50.0)]
    found = oncall.Disks(rows, {"cache1": "unreachable"}, [rows[0]], 85.0)
    assert found.problem == "over 85% or unreachable: db1:/ 90.0%, cache1 unreachable"
    assert oncall.Disks(rows, {}, [], 95.0).problem == ""


@pytest.mark.parametrize("command, flags, expected", [
    ("  ", {"group": "stream"}, "the command is empty"),
    ("uptime", {"group": "stream", "timeout": "0"}, "--timeout must be 1..86400"),
    ("uptime", {"group": None}, "name the hosts with --group"),
])
def test_run_checks_its_flags_before_the_inventory(command, flags, expected, no_ssh):
    args = {"timeout": "120", **flags}
    with pytest.raises(RoadieError, match=expected):
        oncall.run("/nonexistent/inventory", args.pop("group"), command, terminal=ScriptedTerminal(), **args)


def test_run_shows_the_hosts_and_asks_before_it_runs(guarded, monkeypatch):
    monkeypatch.setattr(ssh, "run_parallel", lambda *a, **k: pytest.fail("ran"))
    terminal = ScriptedTerminal(answer=False)
    with pytest.raises(RoadieError, match="not confirmed"):
        oncall.run("lab", "stream", "uptime", timeout="5", terminal=terminal)
    assert terminal.events == ["run: 'uptime' on 3 hosts: stream1, stream2, stream3", "? run it on 3 hosts"]
    assert guarded == []


# ------------------------------------------------------------------ roadie.cache
def _cache(host, role, keys=10, matching=None):
    return redis_client.CacheState(host, role, 0, 0, 0, 0, 0, 0, keys, matching=matching)


def _host(name):
    return Host(name, "10.0.0.9", 22, "deploy", None)


def test_only_masters_are_flushed():
    hosts = [_host("cache1"), _host("cache2")]
    found = cache_commands.masters(hosts, [_cache("cache1", "slave"), _cache("cache2", "master")])
    assert [(h.name, s.role) for h, s in found] == [("cache2", "master")]
    with pytest.raises(RoadieError, match="no Redis master among cache1, cache2; nothing to flush"):
        cache_commands.masters(hosts, [_cache("cache1", "slave"), _cache("cache2", "slave")])


@pytest.fixture
def redis(monkeypatch):
    """The Redis client's cache answering from memory: 12 keys, 5 match; a flush deletes them."""
    calls = []

    def cache(inv, host, pattern=None, flush=False):
        calls.append((host.name, pattern, flush))
        state = _cache(host.name, "master", 12, 5)
        if flush:
            state.flushed, state.keys_after = 5, 7
        return state

    monkeypatch.setattr(redis_client, "cache", cache)
    return calls


def test_a_flush_says_how_many_keys_go_and_asks_first(redis, guarded):
    terminal = ScriptedTerminal(answer=False)
    with pytest.raises(RoadieError, match="not confirmed"):
        cache_commands.flush_cache("lab", "cache", "track:*", message=None, terminal=terminal)
    assert terminal.events == ["cache1: will delete 5 of 12 keys matching 'track:*'", "? flush 5 keys"]
    assert redis == [("cache1", "track:*", False)] and guarded == []


def test_a_confirmed_flush_records_what_each_master_deleted(redis, guarded):
    terminal = ScriptedTerminal()
    cache_commands.flush_cache("lab", "cache", "track:*", message="stale", terminal=terminal)
    [change] = guarded
    assert (change.action, change.hosts, change.message) == ("cache-flush", ["cache1"], "stale")
    assert change.detail == {"flushed_cache1": 5}
    assert redis[-1] == ("cache1", "track:*", True)
    assert terminal.said[-1] == "cache1: deleted 5 keys; 7 left"


def test_a_bad_pattern_is_refused_before_the_inventory(redis):
    with pytest.raises(RoadieError, match="bad --pattern"):
        cache_commands.flush_cache("/nonexistent/inventory", "cache", "a b", message=None, terminal=ScriptedTerminal())
    assert redis == []


# ------------------------------------------------------------------ roadie.deploy.maintenance: the mode
def test_maintenance_on_says_what_clients_get_and_asks_before_any_balancer(guarded, no_ssh):
    terminal = ScriptedTerminal(answer=False)
    with pytest.raises(RoadieError, match="not confirmed"):
        maintenance.turn_on("lab", "Back soon.", 90, terminal)
    assert terminal.events == ["maintenance: every request to lb1 will get 503 (Retry-After 90) with the page "
                               "from templates/maintenance.html.j2", "? turn maintenance mode on"]
    assert guarded == []


def test_maintenance_off_asks_before_any_balancer(guarded, no_ssh):
    with pytest.raises(RoadieError, match="not confirmed"):
        maintenance.turn_off("lab", ScriptedTerminal(answer=False))
    assert guarded == []


# ------------------------------------------------------------------ roadie.change.lock_ops
def test_breaking_the_lock_needs_force_before_anything_is_read(no_ssh):
    with pytest.raises(RoadieError, match="breaking another operator's lock needs --force"):
        lock_ops.break_lock("/nonexistent/inventory", force=False, message=None)


def test_the_lock_holder_is_shown_without_its_token():
    held_with = secrets.token_hex(8)
    holder = lock.LockInfo("ann@ci", "deploy", "r7", "why", token=held_with, acquired_at=100, expires_at=190)
    state = lock_ops.LockState(holder, now=130)
    assert state.as_dict()["token"] is None and state.as_dict()["owner"] == "ann@ci" and holder.token == held_with
    assert state.describe() == "held by ann@ci for deploy r7 since 30 s ago (expires in 60 s): why"
    assert lock_ops.LockState(None, now=0).describe() == "free" and lock_ops.LockState(None, 0).as_dict() is None


# ------------------------------------------------------------------ roadie.db.commands
def _backup(name, age_s, reference=True):
    return db_backups.Backup(name, 3 * 1024 * 1024, "s", f"{name}-done", "000000010000000000000002", age_s, reference)


def test_backups_are_listed_newest_first_with_readable_ages_and_sizes():
    rows = db_commands.backup_rows([_backup("20260101T000000Z", 3 * 86400), _backup("20260103T000000Z", 600, False)])
    assert rows == [
        ("20260103T000000Z", "10 min", "3.0 MiB", "20260103T000000Z-done", "000000010000000000000002", "no"),
        ("20260101T000000Z", "3 d", "3.0 MiB", "20260101T000000Z-done", "000000010000000000000002", "yes")]
    assert db_commands.backup_rows([]) == []


def _restore(ok=True):
    tables = {"plays": {"rows": 3, "checksum": "a"}, "tracks": {"rows": 2, "checksum": "b"}}
    reference = {"plays": {"rows": 3, "checksum": "a"}, "tracks": {"rows": 2, "checksum": "b" if ok else "c"}}
    return db_restore.RestoreCheck("20260103T000000Z", "db2", ok, [] if ok else ["table tracks: checksum differs"],
                                   tables, reference, 12.4, 2048, 0.5, 15.0)


def test_a_restore_check_shows_each_table_against_its_reference():
    assert db_commands.Restored(_restore(ok=False)).lines() == [
        "plays: 3 rows, checksum a (recorded 3, a) ok",
        "tracks: 2 rows, checksum b (recorded 2, c) MISMATCH",
        "backup 20260103T000000Z: restored in 12 s (copy 2.0 KiB in 0.5 s, total 15.0 s)"]
    assert db_commands.Restored(_restore(ok=True)).problem == ""
    assert db_commands.Restored(_restore(ok=False)).problem == (
        "RESTORE CHECK FAILED: backup 20260103T000000Z on db2: table tracks: checksum differs")


def test_replication_rows_and_unreachable_hosts():
    states = [db_replication.NodeState("db1", True, "primary", current_lsn="0/5000000",
                                       slots=[{"slot": "db2", "active": False, "restart_lsn": None,
                                               "retained_bytes": 32 * 1024 * 1024, "wal_status": "extended"}]),
              db_replication.NodeState("db2", False, "down", error="unreachable")]
    assert db_commands.node_rows(states) == [("db1", "primary", "0/5000000", "-", "-", "-", "-", "-"),
                                             ("db2", "down", "-", "-", "-", "-", "-", "unreachable")]
    assert db_commands.slot_rows(states) == [("db1", "db2", "INACTIVE", "-", "32.0 MiB", "extended")]
    assert db_commands.Replication(states).problem == "1 database host(s) unreachable: db2"
    assert db_commands.Replication(states[:1]).problem == ""


def test_a_failover_ends_with_its_timings_warnings_and_the_inventory_change():
    plan = db_failover.FailoverPlan("db1", "db2", "10.0.0.6", ["stream1"], 100, False)
    result = db_failover.FailoverResult(plan, True, "0/1", "0/2", 9.25, {"fence": 1.5, "promote": 2.0}, ["slow"])
    lines = db_commands.FailedOver(result, "lab").lines()
    assert lines[:2] == ["failover: done in 9.2 s fence 1.5, promote 2.0", "WARNING: slow"]
    assert lines[2:] == db_failover.inventory_change(plan, "lab")


def test_a_failover_shows_its_plan_and_asks_before_any_host(guarded, no_ssh, monkeypatch):
    monkeypatch.setattr(db_failover, "failover", lambda *a, **k: pytest.fail("failed over"))
    terminal = ScriptedTerminal(answer=False)
    with pytest.raises(RoadieError, match="not confirmed"):
        db_commands.failover("lab", force=False, max_lag=None, to=None, batch="1", min_serving="1", message=None,
                             terminal=terminal)
    assert terminal.said[0].startswith("failover: promote db2") and terminal.asked == ["promote db2 and fence db1"]


def test_a_backup_says_what_it_does_and_asks_before_the_primary(guarded, no_ssh, monkeypatch):
    monkeypatch.setattr(db_backups, "backup", lambda *a, **k: pytest.fail("backed up"))
    terminal = ScriptedTerminal(answer=False)
    with pytest.raises(RoadieError, match="not confirmed"):
        db_commands.backup("lab", message=None, terminal=terminal)
    assert terminal.said[0].startswith("db.backup: base backup on db1 with pg-base-backup.service")
    assert terminal.asked == ["take a base backup on db1"] and guarded == []


# ------------------------------------------------------------------ audit records written by fab tasks
@pytest.fixture
def lock_host(tmp_path, monkeypatch):
    """lb1 as a lock host that runs the real audit helper (tests/unit/test_audit_chain.py)."""
    from tests.unit.test_audit_chain import LockHost

    fake = LockHost(tmp_path / "fleet")
    monkeypatch.setattr(audit, "LOCAL_LOG", tmp_path / "local" / "audit.log")
    monkeypatch.setattr(ssh, "connect", lambda host: fake if host.name == "lb1" else pytest.fail(host.name))
    return fake


def _records(lock_host):
    return [json.loads(line) for line in (lock_host.log_dir / "audit.log").read_text().splitlines()]


def test_a_restore_check_that_cannot_run_is_recorded_and_fails_in_one_line(lock_host, monkeypatch):
    def restore_check(inv, report, backup_name, on):
        raise RoadieError("db2: pg-restore-check not found")

    monkeypatch.setattr(db_restore, "restore_check", restore_check)
    with pytest.raises(RoadieError, match=r"^RESTORE CHECK FAILED: db2: pg-restore-check not found$"):
        db_commands.restore_check("lab", None, None, as_json=False)
    [rec] = _records(lock_host)
    assert (rec["action"], rec["result"], rec["error"]) == ("db.restore-check", "failed",
                                                            "db2: pg-restore-check not found")
    assert lock_host.closed


def test_a_restore_check_that_ran_is_recorded_with_its_verdict(lock_host, monkeypatch):
    monkeypatch.setattr(db_restore, "restore_check", lambda inv, report, backup_name, on: _restore(ok=False))
    restored = db_commands.restore_check("lab", None, None, as_json=True)
    [rec] = _records(lock_host)
    assert (rec["action"], rec["result"], rec["backup"], rec["restored_on"]) == (
        "db.restore-check", "failed", "20260103T000000Z", "db2")
    assert rec["problems"] == ["table tracks: checksum differs"] and restored.problem.startswith("RESTORE CHECK")


def test_breaking_a_held_lock_records_who_held_it(lock_host, monkeypatch):
    holder = lock.LockInfo("ann@ci", "deploy", "r7", "why", acquired_at=100, expires_at=190)
    monkeypatch.setattr(lock, "force_release", lambda conn: holder)
    assert lock_ops.break_lock("lab", force=True, message="ann left") is holder
    [rec] = _records(lock_host)
    assert (rec["action"], rec["result"], rec["release"], rec["previous_owner"], rec["previous_operation"],
            rec["message"]) == ("unlock", "forced", "r7", "ann@ci", "deploy", "ann left")
    assert lock_host.closed


def test_breaking_a_free_lock_records_nothing(lock_host, monkeypatch):
    monkeypatch.setattr(lock, "force_release", lambda conn: None)
    assert lock_ops.break_lock("lab", force=True, message=None) is None
    assert not (lock_host.log_dir / "audit.log").exists()
