"""The fleet's audit log is evidence (issue 13): written by root only, with the key sshd accepted, chained.

Change commands run as an operator runs them (`fab ...` in a subprocess). The log on lb1 is then read
as root (the `conns` fixture), the deploy user tries to change it, and root edits it as an intruder
with root would, to see `fab audit` name the record.
"""

import json
import socket
import subprocess

from roadie.change import audit
from roadie.core import ssh
from roadie.core.paths import LAB_KEY
from tests.lab.fabrun import fab, ok

LOCK_HOST = "lb1"
LOG = audit.LOG_PATH


def lab_key_fingerprint() -> str:
    """SHA256 fingerprint of the lab's operator key, as ssh-keygen prints it (the controller's own view)."""
    public = LAB_KEY.with_name(LAB_KEY.name + ".pub")
    out = subprocess.run(["ssh-keygen", "-lf", str(public if public.exists() else LAB_KEY)], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    fingerprint = out.split()[1]
    assert fingerprint.startswith("SHA256:") and len(fingerprint) == 50, out
    return fingerprint


def _root(conns, command: str, **kwargs):
    return conns(LOCK_HOST).run(command, hide=True, warn=True, in_stream=False, **kwargs)


def log_lines(conns) -> list[str]:
    result = _root(conns, f"cat {LOG}")
    assert result.exited == 0, result.stderr
    return result.stdout.splitlines()


def log_state(conns) -> str:
    """Owner, mode, type and checksum of the log and its directory, read as root."""
    return _root(conns, f"stat -c '%U %a %F %h' /var/log/roadie {LOG} && sha256sum {LOG}").stdout


def test_change_commands_are_recorded_with_the_key_sshd_accepted(stack, conns):
    key = lab_key_fingerprint()
    before = len(log_lines(conns))
    ok(fab("run", "true", "--group", "stream", "--yes"))
    ok(fab("seed"))
    ok(fab("drain", "stream3", "--message", "audit evidence", operator="mallory"))
    ok(fab("undrain", "stream3"))
    ok(fab("cache.flush", "--pattern", "roadie-audit-evidence:*", "--yes"))
    lines = log_lines(conns)
    new = [json.loads(line) for line in lines[before:]]
    assert [r["action"] for r in new] == ["run", "seed", "drain", "undrain", "cache-flush"], new
    hostname = _root(conns, "hostname").stdout.strip()
    for r in new:
        assert r["ssh_key"] == key and r["ssh_key_type"] == "ED25519", r
        assert r["sudo_user"] == "deploy" and r["host"] == hostname and r["result"] == "ok", r
    assert [r["seq"] for r in new] == list(range(before + 1, before + 6))
    run = new[0]
    assert run["command"] == "true" and run["hosts"] == ["stream1", "stream2", "stream3"]
    assert run["exit"] == {"stream1": 0, "stream2": 0, "stream3": 0} and run["failed"] == []
    # `who` is the operator's claim; the key and the sudo user are the host's evidence.
    assert new[2]["who"] == f"mallory@{socket.gethostname()}" and new[2]["ssh_key"] == key
    assert audit.check_chain(lines) is None
    shown = json.loads(ok(fab("audit", "--json", "--last", "5")))
    assert [r["seq"] for r in shown] == [r["seq"] for r in new] and {r["ssh_key"] for r in shown} == {key}
    text = ok(fab("audit", "--last", "5"))
    assert key in text and f"{LOCK_HOST}: {len(lines)} records, hash chain intact" in text


def test_the_deploy_user_cannot_write_remove_or_replace_the_log(stack, conns, lab_inventory):
    ok(fab("run", "true", "--group", "lb1", "--yes"))               # the log exists and has a record
    state = log_state(conns)
    assert state.splitlines()[:2] == ["root 755 directory 2", "root 644 regular file 1"], state
    attempts = {
        "append": f"echo '{{\"action\":\"forged\"}}' >> {LOG}",
        "truncate": f"truncate -s 0 {LOG}",
        "remove": f"rm -f {LOG}",
        "move over": f"echo x > /tmp/forged.log && mv -f /tmp/forged.log {LOG}",
        "move away": f"mv -f {LOG} /tmp/stolen.log",
        "link": f"ln -sfn /tmp/forged.log {LOG}",
        "link the directory": "ln -sfn /tmp /var/log/roadie/sub && test -L /var/log/roadie/sub",
        "helper with a path": f"echo '{{}}' | sudo -n {audit.HELPER} append --log-dir /tmp",
        "helper with a forged key": f"echo '{{\"action\":\"x\",\"ssh_key\":\"SHA256:forged\"}}' "
                                    f"| sudo -n {audit.HELPER} append",
        "helper with no object": f"echo '[1]' | sudo -n {audit.HELPER} append",
    }
    with ssh.connect(lab_inventory.hosts[LOCK_HOST]) as deploy_conn:
        assert deploy_conn.run("id -un", hide=True, in_stream=False).stdout.strip() == "deploy"
        done = {name: deploy_conn.run(cmd, hide=True, warn=True, in_stream=False).exited
                for name, cmd in attempts.items()}
    _root(conns, "rm -f /tmp/forged.log /tmp/stolen.log")
    assert all(code != 0 for code in done.values()), done
    assert log_state(conns) == state                                  # same owner, mode, type and bytes


EDIT = r'''
import json, sys
path, index, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = open(path).read().splitlines()
if how == "edit":
    record = json.loads(lines[index])
    record["result"] = "forged"
    lines[index] = json.dumps(record, sort_keys=True, separators=(",", ":"))
else:
    del lines[index]
with open(path, "r+") as f:
    f.truncate(0)
    f.write("\n".join(lines) + "\n")
'''


BACKUP = "/root/audit.log.test-backup"


def test_fab_audit_names_an_edited_or_deleted_record(stack, conns):
    for _ in range(3):
        ok(fab("run", "true", "--group", "lb1", "--yes"))
    ok(fab("audit", "--last", "1"))
    lines = log_lines(conns)
    index = len(lines) - 2                                            # a past record, not the last
    seq = json.loads(lines[index])["seq"]
    # Taken after the last record this test makes: putting it back loses nothing this machine recorded.
    assert _root(conns, f"cp -p {LOG} {BACKUP}").exited == 0
    state = log_state(conns)
    try:
        assert _root(conns, ssh.python_command(EDIT, LOG, index, "edit")).exited == 0
        edited = fab("audit", "--last", "3")
        assert edited.returncode == 1, edited.stdout + edited.stderr
        line = edited.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: audit log on {LOCK_HOST} is broken at line {index + 1} (record {seq} "), line
        assert "edited" in line
        assert _root(conns, f"cat {BACKUP} > {LOG}").exited == 0
        ok(fab("audit", "--last", "1"))
        assert _root(conns, ssh.python_command(EDIT, LOG, index, "delete")).exited == 0
        deleted = fab("audit", "--last", "3")
        assert deleted.returncode == 1, deleted.stdout + deleted.stderr
        line = deleted.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: audit log on {LOCK_HOST} is broken at line {index + 1} "), line
        assert f"record {seq} deleted before it" in line
    finally:
        assert _root(conns, f"cat {BACKUP} > {LOG} && rm -f {BACKUP}").exited == 0
    assert log_state(conns) == state                                  # same inode's owner, mode and bytes
    ok(fab("audit", "--last", "1"))
