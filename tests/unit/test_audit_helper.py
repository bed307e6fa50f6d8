"""The audit log's root helper (roles/common/files/roadie_audit.py), run here against real files.

The helper's test hooks (`log_dir`, `owner_uid`, a fake /proc tree, a fake journal) are Python
parameters: its command line takes exactly `append`, so sudo's exact line cannot reach them.
"""

import hashlib
import json
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from roadie.change import audit
from tests.unit.audit_program import EVIDENCE, HELPER_FILE, KEY, OTHER_KEY, helper


def put(log_dir: Path, record: dict, evidence: dict = EVIDENCE) -> str:
    """Append as the helper does on a host, in a directory the test user owns."""
    return helper.append(record, evidence, log_dir=str(log_dir), owner_uid=os.getuid())


def lines_of(log_dir: Path) -> list[str]:
    return (log_dir / "audit.log").read_text().splitlines()


# ------------------------------------------------------------------ appending and the chain
def test_each_record_gets_the_hosts_fields_and_chains_to_the_one_before(tmp_path):
    log_dir = tmp_path / "roadie"                       # created by the helper
    written = [put(log_dir, {"action": a, "who": "alice@laptop"}) for a in ("deploy", "drain", "run")]
    lines = lines_of(log_dir)
    assert lines == written
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == hashlib.sha256(b"").hexdigest()
    assert records[1]["prev"] == hashlib.sha256(lines[0].encode()).hexdigest()
    assert records[2]["prev"] == hashlib.sha256(lines[1].encode()).hexdigest()
    assert all(r["ssh_key"] == KEY and r["sudo_user"] == "deploy" and r["host_ts"].endswith("Z") for r in records)
    assert [r["action"] for r in records] == ["deploy", "drain", "run"]
    assert stat.S_IMODE((log_dir / "audit.log").stat().st_mode) == 0o644
    assert stat.S_IMODE(log_dir.stat().st_mode) == 0o755
    assert audit.check_chain(lines) is None               # what the helper writes, `fab audit` accepts


def _append_many(log_dir: str, worker: int) -> None:
    for i in range(25):
        helper.append({"action": "run", "worker": worker, "i": i}, EVIDENCE, log_dir=log_dir, owner_uid=os.getuid())


def test_concurrent_appends_keep_one_unbroken_chain(tmp_path):
    put(tmp_path / "roadie", {"action": "first"})
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(str(tmp_path / "roadie"), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    lines = lines_of(tmp_path / "roadie")
    assert len(lines) == 101
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 102))
    assert audit.check_chain(lines) is None


@pytest.mark.parametrize("data, expected", [
    (b"[1, 2]", "must be a JSON object, got list"),
    (b'"deploy"', "must be a JSON object, got str"),
    (b"42", "must be a JSON object, got int"),
    (b"null", "must be a JSON object, got NoneType"),
    (b"{\"action\": ", "not JSON"),
    (b"\xff\xfe{}", "not JSON"),
    (b'{"duration_s": NaN}', "not JSON"),
    (b"[" * 100_00 + b"]" * 100_00, "not JSON"),
    (b'{"action": "deploy", "ssh_key": "SHA256:forged"}', "may not set fields this host adds: ssh_key"),
    (b'{"prev": "0", "seq": 1}', "may not set fields this host adds: prev, seq"),
    (b'{"sudo_user": "root"}', "sudo_user"),
])
def test_records_that_are_not_one_plain_object_are_refused(data, expected):
    with pytest.raises(helper.Refused, match=expected):
        helper.parse_record(data)


def test_oversized_records_are_refused_and_the_limit_itself_is_accepted():
    filler = b'{"message": "' + b"x" * (helper.MAX_RECORD - 15) + b'"}'
    assert len(filler) == helper.MAX_RECORD
    assert helper.parse_record(filler)["message"].startswith("x")
    with pytest.raises(helper.Refused, match="larger than 65536 bytes"):
        helper.parse_record(filler + b" ")


def test_the_command_line_takes_exactly_append(tmp_path):
    for argv in ([], ["append", "--log-dir", str(tmp_path)], ["append", str(tmp_path)], ["--root", str(tmp_path)],
                 ["verify"]):
        done = subprocess.run([sys.executable, str(HELPER_FILE), *argv], input=b"{}", capture_output=True,
                              timeout=30, check=False)
        assert done.returncode == 2, argv
        assert b"usage: roadie-audit append" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_refused_record_from_stdin_exits_1_with_one_line():
    # Refused before the log is opened: as root or not, nothing is written anywhere.
    done = subprocess.run([sys.executable, str(HELPER_FILE), "append"], input=b"[1]", capture_output=True,
                          timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr.decode().count("\n") == 1 and done.stderr.startswith(b"roadie-audit: ")


def test_the_program_runs_isolated_from_the_callers_python_environment():
    assert HELPER_FILE.read_text().splitlines()[0] == "#!/usr/bin/python3 -I"


# ------------------------------------------------------------------ nothing writable on the path
def test_a_linked_log_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "roadie").symlink_to(real)
    with pytest.raises(helper.Refused, match=r"/roadie is a symbolic link; refusing to follow it"):
        put(tmp_path / "roadie", {"action": "deploy"})
    assert list(real.iterdir()) == []


def test_a_link_above_the_log_directory_is_refused(tmp_path):
    (tmp_path / "real" / "roadie").mkdir(parents=True)
    (tmp_path / "var").symlink_to(tmp_path / "real")
    with pytest.raises(helper.Refused, match=r"/var is a symbolic link"):
        put(tmp_path / "var" / "roadie", {"action": "deploy"})
    assert list((tmp_path / "real" / "roadie").iterdir()) == []


def test_a_log_file_that_is_a_link_is_never_followed(tmp_path):
    log_dir = tmp_path / "roadie"
    log_dir.mkdir()
    target = tmp_path / "shadow"
    target.write_text("root's file\n")
    (log_dir / "audit.log").symlink_to(target)
    with pytest.raises(helper.Refused, match="audit.log is a symbolic link"):
        put(log_dir, {"action": "deploy"})
    assert target.read_text() == "root's file\n"
    (log_dir / "audit.log").unlink()
    (log_dir / "audit.log").symlink_to(tmp_path / "nothing-here")      # dangling: not created through it
    with pytest.raises(helper.Refused, match="symbolic link"):
        put(log_dir, {"action": "deploy"})
    assert not (tmp_path / "nothing-here").exists()


def test_a_hard_linked_or_special_log_file_is_refused(tmp_path):
    log_dir = tmp_path / "roadie"
    put(log_dir, {"action": "deploy"})
    os.link(log_dir / "audit.log", tmp_path / "other-name")
    with pytest.raises(helper.Refused, match="links 2"):
        put(log_dir, {"action": "drain"})
    os.unlink(log_dir / "audit.log")
    os.mkfifo(log_dir / "audit.log")
    with pytest.raises(helper.Refused, match="must be a regular file"):
        put(log_dir, {"action": "drain"})


def test_a_log_directory_others_can_write_is_refused(tmp_path):
    log_dir = tmp_path / "roadie"
    log_dir.mkdir()
    log_dir.chmod(0o777)
    with pytest.raises(helper.Refused, match=r"writable by it alone \(uid \d+, mode 0777\)"):
        put(log_dir, {"action": "deploy"})
    assert not (log_dir / "audit.log").exists()


def test_a_log_directory_of_another_owner_is_refused(tmp_path):
    log_dir = tmp_path / "roadie"
    log_dir.mkdir()
    with pytest.raises(helper.Refused, match=f"must belong to uid {os.getuid() + 1}"):
        helper.append({"action": "deploy"}, EVIDENCE, log_dir=str(log_dir), owner_uid=os.getuid() + 1)
    assert not (log_dir / "audit.log").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_a_log_directory_the_deploy_user_owns_is_refused_by_root(tmp_path):
    log_dir = tmp_path / "roadie"
    log_dir.mkdir()
    os.chown(log_dir, 65534, 65534)             # as /var/lib/roadie was: owned by the deploy user
    with pytest.raises(helper.Refused, match="must belong to uid 0"):
        helper.append({"action": "deploy"}, EVIDENCE, log_dir=str(log_dir), owner_uid=0)
    assert not (log_dir / "audit.log").exists()


def test_a_log_file_others_can_write_is_refused(tmp_path):
    log_dir = tmp_path / "roadie"
    put(log_dir, {"action": "deploy"})
    (log_dir / "audit.log").chmod(0o666)
    with pytest.raises(helper.Refused, match="mode 0666"):
        put(log_dir, {"action": "drain"})
    assert len(lines_of(log_dir)) == 1


def test_a_torn_or_foreign_last_line_stops_appending(tmp_path):
    log_dir = tmp_path / "roadie"
    put(log_dir, {"action": "deploy"})
    with open(log_dir / "audit.log", "a") as f:
        f.write('{"seq": 2, "action": "dra')
    with pytest.raises(helper.Refused, match="ends in a partial line"):
        put(log_dir, {"action": "drain"})
    (log_dir / "audit.log").write_text(lines_of(log_dir)[0] + "\nhello\n")
    with pytest.raises(helper.Refused, match="last line of audit.log is not a record"):
        put(log_dir, {"action": "drain"})


def test_a_long_last_line_is_found_across_read_chunks(tmp_path):
    log_dir = tmp_path / "roadie"
    put(log_dir, {"action": "deploy", "message": "y" * 60_000})
    put(log_dir, {"action": "run", "command": "z" * 63_000})
    put(log_dir, {"action": "drain"})
    assert [json.loads(line)["seq"] for line in lines_of(log_dir)] == [1, 2, 3]
    assert audit.check_chain(lines_of(log_dir)) is None


# ------------------------------------------------------------------ the key sshd accepted
BTIME = 1_760_000_000
HZ = 100


def fake_proc(root: Path, procs: list[tuple[int, int, int, str, int]]) -> Path:
    """A /proc tree: (pid, ppid, uid, cmdline with NUL separators, start ticks)."""
    (root / "stat").parent.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(f"cpu  1 2 3 4\nbtime {BTIME}\nprocesses 99\n")
    for pid, ppid, uid, cmdline, start in procs:
        d = root / str(pid)
        d.mkdir()
        (d / "status").write_text(f"Name:\tx\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t{pid}\nPPid:\t{ppid}\n"
                                  f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        (d / "cmdline").write_bytes(cmdline.encode())
        fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 30
        (d / "stat").write_text(f"{pid} (x y) {' '.join(fields)}\n")
    return root


# helper <- sudo <- the user's shell <- sshd's unprivileged child <- the session's monitor <- listener <- init
SESSION = [
    (500, 499, 0, "python3\0/usr/local/sbin/roadie-audit\0append\0", 9000),
    (499, 480, 0, "sudo\0-n\0/usr/local/sbin/roadie-audit\0append\0", 9000),
    (480, 470, 1000, "bash\0-c\0sudo -n /usr/local/sbin/roadie-audit append\0", 8990),
    (470, 460, 1000, "sshd: deploy@notty" + "\0" * 20, 8950),
    (460, 300, 0, "sshd: deploy [priv]" + "\0" * 20, 8950),
    (300, 1, 0, "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups\0", 100),
    (1, 0, 0, "/sbin/init\0", 1),
]
MONITOR_START_US = (BTIME * 100 + 8950) * 10_000        # 8950 ticks at 100 Hz after boot


def test_the_ancestor_walk_finds_the_sessions_privileged_monitor(tmp_path):
    proc = fake_proc(tmp_path / "proc", SESSION)
    chain = helper.ancestors(proc, 500)
    assert [p.pid for p in chain] == [500, 499, 480, 470, 460, 300, 1]
    assert chain[3].cmdline == "sshd: deploy@notty" and chain[3].uid == 1000
    monitor = helper.session_monitor(chain)
    assert monitor.pid == 460 and monitor.cmdline == "sshd: deploy [priv]"
    assert helper.process_start_us(proc, monitor, HZ) == MONITOR_START_US


def test_a_process_the_user_named_like_sshd_is_not_the_monitor(tmp_path):
    forged = [p if p[0] != 480 else (480, 470, 1000, "sshd: deploy [priv]\0", 8990) for p in SESSION]
    proc = fake_proc(tmp_path / "proc", forged)
    assert helper.session_monitor(helper.ancestors(proc, 500)).pid == 460


@pytest.mark.parametrize("procs", [
    # run from a cron job: no sshd at all
    [(500, 499, 0, "python3\0roadie-audit\0append\0", 9), (499, 400, 0, "sudo\0", 9),
     (400, 350, 1000, "sh\0-c\0job\0", 9), (350, 1, 0, "/usr/sbin/cron\0-f\0", 5), (1, 0, 0, "/sbin/init\0", 1)],
    # detached from its session (reparented to init), a user-owned "sshd:" on the way
    [(500, 499, 0, "python3\0roadie-audit\0append\0", 9), (499, 480, 0, "sudo\0", 9),
     (480, 1, 1000, "sshd: deploy [priv]\0", 9), (1, 0, 0, "/sbin/init\0", 1)],
    # a root sshd that is not a session monitor
    [(500, 499, 0, "python3\0roadie-audit\0append\0", 9), (499, 300, 0, "sudo\0", 9),
     (300, 1, 0, "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups\0", 5), (1, 0, 0, "/sbin/init\0", 1)],
])
def test_no_session_monitor_without_an_sshd_session(tmp_path, procs):
    assert helper.session_monitor(helper.ancestors(fake_proc(tmp_path / "proc", procs), 500)) is None


def journal_line(message: str, pid: int = 460, comm: str = "sshd", at_us: int = MONITOR_START_US + 300_000) -> str:
    return json.dumps({"MESSAGE": message, "_PID": str(pid), "_COMM": comm, "SYSLOG_IDENTIFIER": "sshd",
                       "__REALTIME_TIMESTAMP": str(at_us), "_BOOT_ID": "b" * 32})


ACCEPTED = f"Accepted publickey for deploy from 172.18.0.1 port 50522 ssh2: ED25519 {KEY}"
JOURNAL = "\n".join([
    # an earlier sshd that had the same PID, before this one started
    journal_line(f"Accepted publickey for deploy from 10.9.9.9 port 1 ssh2: ED25519 {OTHER_KEY}",
                 at_us=MONITOR_START_US - 3_600_000_000),
    journal_line("Connection from 172.18.0.1 port 50522 on 172.18.0.3 port 22 rdomain \"\""),
    journal_line(f"Accepted key ED25519 {KEY} found at /home/deploy/.ssh/authorized_keys:1"),
    # the same text sent by a user's process (logger): journald records the sender's own _PID and _COMM
    journal_line(f"Accepted publickey for deploy from 10.6.6.6 port 2 ssh2: ED25519 {OTHER_KEY}", pid=4242,
                 comm="logger"),
    journal_line(ACCEPTED),
    journal_line("pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)"),
    json.dumps({"MESSAGE": [65, 66], "_PID": "460", "_COMM": "sshd", "__REALTIME_TIMESTAMP": "1"}),
    "not json",
])


def test_the_journal_line_of_the_monitor_gives_the_key_and_the_address():
    found = helper.parse_accepted(JOURNAL, "deploy", 460, MONITOR_START_US - 2_000_000)
    assert found == {"ssh_key": KEY, "ssh_key_type": "ED25519", "ssh_from": "172.18.0.1"}


@pytest.mark.parametrize("journal, user, pid", [
    (JOURNAL, "alice", 460),                                              # another user's login
    (JOURNAL, "deploy", 461),                                             # another process
    (journal_line(ACCEPTED, comm="bash"), "deploy", 460),                 # not sshd
    (journal_line(ACCEPTED, at_us=MONITOR_START_US - 60_000_000), "deploy", 460),  # before it started
    (journal_line(ACCEPTED.replace("publickey", "password").replace(f" ED25519 {KEY}", "")), "deploy", 460),
    ("", "deploy", 460),
])
def test_no_key_unless_this_monitor_logged_this_users_publickey_login(journal, user, pid):
    assert helper.parse_accepted(journal, user, pid, MONITOR_START_US - 2_000_000) is None


def test_the_new_sshd_session_binary_is_understood():
    journal = journal_line(ACCEPTED, comm="sshd-session")
    assert helper.parse_accepted(journal, "deploy", 460, 0)["ssh_key"] == KEY
    assert helper.session_monitor([helper.Proc(7, 1, 0, 0, "sshd-session: deploy [priv]", 1)]).pid == 7


def test_ssh_evidence_waits_for_journald_and_says_why_when_there_is_no_key(tmp_path, monkeypatch):
    proc = fake_proc(tmp_path / "proc", SESSION)
    monkeypatch.setattr(helper.os, "sysconf", lambda name: HZ)
    asked, naps = [], []
    answers = iter(["", "", JOURNAL])

    def journal(pid):
        asked.append(pid)
        return next(answers)

    found = helper.ssh_evidence("deploy", proc_root=proc, pid=500, journal=journal, sleep=naps.append)
    assert found == {"ssh_key": KEY, "ssh_key_type": "ED25519", "ssh_from": "172.18.0.1"}
    assert asked == [460, 460, 460] and len(naps) == 2

    missing = helper.ssh_evidence("deploy", proc_root=proc, pid=500, journal=lambda pid: "", sleep=naps.append)
    assert missing == {"ssh_key": None,
                       "ssh_key_note": "no 'Accepted publickey for deploy' line from sshd[460] in the journal"}
    cron = fake_proc(tmp_path / "proc2", [(500, 1, 0, "python3\0", 9), (1, 0, 0, "/sbin/init\0", 1)])
    none = helper.ssh_evidence("deploy", proc_root=cron, pid=500, journal=lambda pid: JOURNAL, sleep=naps.append)
    assert none == {"ssh_key": None, "ssh_key_note": "no sshd session monitor among the caller's processes"}


def test_the_journal_query_names_the_pid_and_sshd_only(monkeypatch):
    seen = {}

    def fake_run(argv, **kwargs):
        seen["argv"] = argv
        return subprocess.CompletedProcess(argv, 0, stdout="x", stderr="")

    monkeypatch.setattr(helper.subprocess, "run", fake_run)
    assert helper.journal_of(460) == "x"
    assert seen["argv"] == ["/usr/bin/journalctl", "-q", "--no-pager", "-o", "json", "_PID=460",
                            "_COMM=sshd", "_COMM=sshd-session"]


def test_the_helper_reads_its_own_real_proc_entry():
    me = helper.read_proc(Path("/proc"), os.getpid())
    assert me.pid == os.getpid() and me.ppid == os.getppid() and me.uid == os.getuid()
    assert helper.ancestors(Path("/proc"), os.getpid())[-1].ppid == 0
