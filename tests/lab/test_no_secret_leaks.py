"""No secret leaks: run the loud paths at high verbosity and search everything they left for every secret.

The test makes what it searches itself, so it proves the same wherever it runs in the session: the
session's site.yml rerun at -vvv (conftest's `site_rerun`) and, with `fab --debug`, a deploy, status,
cache.info, a cache flush, a restart of the cache, a seed, a base backup and its restore check, client
requests through the balancer (a catalogue read, a play, a 404), a failed deploy (rolled back) and a
failover (then the lab is put back). The failover is the slowest of them: when test_database_ops's
failover test already ran one with `fab --debug` in this session, its output and its hosts' journals of
that window are searched instead of a second failover. It collects every output of every `fab` run of the
session, the local logs, the audit log on the lock host, every host's journal since the test began, during
the rerun and during a reused failover, and the services' log files.
Each secret (every vault_* value, the vault password, the lab's SSH private key) is searched for as it
is and in the encodings it would take in a URL or a log line; a hit fails naming the file and line.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse

from roadie.core import inventory, vault
from roadie.core.paths import LAB_STATE, ROOT
from tests.lab.fabrun import RAN, fab, ran_ok
from tests.lab.releases import break_health, build_variant
from tests.lab.topology import SWAPPED, restore_topology, wait_streaming
from tests.lab.traffic import get

REMOTE_LOGS = "/var/log/nginx /var/log/postgresql /var/log/redis /var/log/haproxy.log /srv/stream/shared/logs " \
              "/var/log/roadie/audit.log"


def _secrets() -> dict[str, str]:
    found = {f"vault:{k}": v for k, v in vault.read(vault.LAB_VAULT_FILE, vault.LAB_VAULT_PASSWORD_FILE).items()}
    found["vault password"] = vault.LAB_VAULT_PASSWORD_FILE.read_text().strip()
    key_lines = [ln for ln in (LAB_STATE / "ssh" / "id_ed25519").read_text().splitlines() if "PRIVATE KEY" not in ln]
    for i, line in enumerate(key_lines):
        found[f"lab private key line {i + 1}"] = line.strip()
    forms: dict[str, str] = {}
    for name, value in found.items():
        assert len(value) >= 16, f"{name} is too short to search for without false hits"
        forms[name] = value
        forms[f"{name} (url-encoded)"] = urllib.parse.quote(value, safe="")
        forms[f"{name} (base64)"] = base64.b64encode(value.encode()).decode().rstrip("=")
    return forms


def _redacted(text: str, secrets: dict[str, str]) -> str:
    """`text` with every secret form replaced by its name: what a failure message may show."""
    for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
        text = text.replace(value, f"<{name}>")
    return text


def _fab(*args: str, secrets: dict[str, str], label: str, expect_ok: bool = True) -> str:
    """`fab --debug ARGS`; its output is searched with every other fab run of the session (fabrun.RAN)."""
    result = fab("--debug", *args, timeout=1200)
    assert (result.returncode == 0) == expect_ok, \
        f"fab {label}: exit {result.returncode}: {_redacted(result.stderr[-2000:], secrets)}"
    return result.stdout


def _hits(texts: dict[str, str], secrets: dict[str, str]) -> list[str]:
    hits = []
    for source, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            for name, value in secrets.items():
                if value in line:
                    hits.append(f"{source}:{number}: contains {name}")
    return hits


def test_no_secret_appears_in_any_output_log_or_journal(stack, conns, lab_inventory, site_rerun, tmp_path):
    secrets = _secrets()
    started = time.time() - 1
    outputs: dict[str, str] = {}

    def loud(*args: str, label: str, expect_ok: bool = True) -> str:
        return _fab(*args, secrets=secrets, label=label, expect_ok=expect_ok)

    # The session's site.yml rerun ran at -vvv (conftest.site_rerun); its hosts' journals are read below.
    run = site_rerun.run
    outputs["ansible-playbook site.yml -vvv"] = run.output
    assert run.ok, _redacted(run.output[-3000:], secrets)
    assert run.output.count("censored") > 0     # the no_log tasks were there, and said so

    loud("deploy", "--build", "--yes", "--message", "leak test", label="deploy")
    loud("status", label="status")
    loud("cache.info", label="cache.info")
    loud("cache.flush", "--pattern", "roadie-leak-test:*", "--yes", "--message", "leak test", label="cache.flush")
    loud("restart", "--group", "cache", "--yes", "--message", "leak test", label="restart cache")
    loud("seed", label="seed")
    # What the stream service and the web tier log for clients: a read, a write, a miss.
    assert get(stack["lb"], "/tracks")[0] == 200
    assert get(stack["lb"], "/plays", {"Content-Type": "application/json"}, "POST",
               json.dumps({"track_id": 1, "listener_id": "leak-test"}).encode())[0] == 201
    assert get(stack["lb"], "/tracks/999999")[0] == 404
    loud("db.backup", "--yes", "--message", "leak test", label="db.backup")
    loud("db.restore-check", label="db.restore-check")
    broken = build_variant(tmp_path, f"leak-broken-{int(time.time())}", break_health)
    loud("deploy", "--artifact", str(broken), "--yes", label="failed deploy", expect_ok=False)
    windows = [(site_rerun.started, site_rerun.ended, "during site.yml -vvv")]
    reused = ran_ok("--debug", "db.failover")
    if reused is not None:
        windows.append((reused.started, reused.ended, "during the failover test's fab --debug db.failover"))
    else:
        wait_streaming("db1", "db2")
        try:
            loud("db.failover", "--yes", "--message", "leak test", label="db.failover")
        finally:
            restore_topology(conns)
    # Every fab run of the session so far, the loud ones above among them, each once.
    for number, ran in enumerate(RAN, 1):
        outputs[f"fab run {number} {' '.join(ran.args)[:60]} (stdout)"] = ran.stdout
        outputs[f"fab run {number} {' '.join(ran.args)[:60]} (stderr)"] = ran.stderr
    # The round trip leaves the lab inventory as it was: db1 the primary, db2 its replica, no swapped copy.
    lab = inventory.load("lab")
    assert lab.groups["database_primary"] == ("db1",) and lab.groups["database_replica"] == ("db2",)
    assert not SWAPPED.exists()

    local = {str(p.relative_to(ROOT)): p.read_text(errors="replace") for p in (ROOT / "logs").rglob("*")
             if p.is_file()}
    assert "logs/audit.log" in local
    remote: dict[str, str] = {}
    for name in lab_inventory.hosts:
        conn = conns(name)
        journal = conn.run(f"journalctl --no-pager -o short-iso --since @{int(started)}", hide=True, warn=True,
                           in_stream=False, timeout=120)
        remote[f"{name}:journal"] = journal.stdout
        for since, until, what in windows:
            journal = conn.run(f"journalctl --no-pager -o short-iso --since @{int(since)} --until @{int(until) + 1}",
                               hide=True, warn=True, in_stream=False, timeout=120)
            remote[f"{name}:journal {what}"] = journal.stdout
        files = conn.run(f"find {REMOTE_LOGS} -type f -size -64M 2>/dev/null | xargs -r grep -I -l '' || true",
                         hide=True, warn=True, in_stream=False).stdout.split()
        for path in files:
            remote[f"{name}:{path}"] = conn.run(f"cat {path}", hide=True, warn=True, in_stream=False).stdout
    assert any(k.endswith("/var/log/roadie/audit.log") for k in remote)
    sizes = {"outputs": sum(map(len, outputs.values())), "local logs": sum(map(len, local.values())),
             "remote": sum(map(len, remote.values()))}
    hits = _hits(outputs, secrets) + _hits(local, secrets) + _hits(remote, secrets)
    print(f"\nsearched {len(secrets)} secret forms in {len(outputs)} outputs, {len(local)} local logs and "
          f"{len(remote)} remote journals/logs ({', '.join(f'{k} {v // 1024} KiB' for k, v in sizes.items())})")
    assert not hits, "secrets leaked:\n" + "\n".join(hits[:50])


def test_the_search_finds_a_planted_secret():
    """The scan itself can fail: a secret written to a log, as it is or encoded, is found and named by file and
    line."""
    secrets = _secrets()
    name, value = next(iter(secrets.items()))
    planted = ("line one\n"
               f"DATABASE_URL=postgresql://u:{value}@db1/x\n"
               f"next=https://lb1/login?password={urllib.parse.quote(value, safe='')}\n"
               f"Authorization: Basic {base64.b64encode(value.encode()).decode()}\n")
    found = _hits({"planted.log": planted}, secrets)
    assert f"planted.log:2: contains {name}" in found
    assert f"planted.log:3: contains {name} (url-encoded)" in found
    assert f"planted.log:4: contains {name} (base64)" in found
    assert not [hit for hit in found if hit.startswith("planted.log:1:")]
    assert value not in _redacted(planted, secrets)              # what a failure message may show hides it
