"""No secret leaks: run the loud paths at high verbosity and search everything they left for every secret.

Runs last in the lab session (file name): the session's site.yml rerun at -vvv, `fab --debug` deploy,
status, a failed deploy (rolled back) and a failover (then the lab is put back), and collects every
output, the local logs, the audit log on the lock host, every host's journal since the test began and
during the rerun, and the services' log files.
Each secret (every vault_* value, the vault password, the lab's SSH private key) is searched for as it
is and in the encodings it would take in a URL or a log line; a hit fails naming the file and line.
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from pathlib import Path

from roadie import inventory, vault
from roadie.paths import LAB_STATE, ROOT
from tests.lab.fabrun import fab
from tests.lab.releases import break_health, build_variant
from tests.lab.topology import restore_topology, wait_streaming

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


def _fab(*args: str, outputs: dict, label: str, expect_ok: bool = True) -> str:
    result = fab("--debug", *args, timeout=1200)
    outputs[f"fab {label} (stdout)"] = result.stdout
    outputs[f"fab {label} (stderr)"] = result.stderr
    assert (result.returncode == 0) == expect_ok, f"fab {label}: exit {result.returncode}: {result.stderr[-2000:]}"
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

    # The session's site.yml rerun ran at -vvv (conftest.site_rerun); its hosts' journals are read below.
    run = site_rerun.run
    outputs["ansible-playbook site.yml -vvv"] = run.output
    assert run.ok, run.output[-3000:]
    assert run.output.count("censored") > 0     # the no_log tasks were there, and said so

    _fab("deploy", "--build", "--yes", "--message", "leak test", outputs=outputs, label="deploy")
    _fab("status", outputs=outputs, label="status")
    _fab("cache.info", outputs=outputs, label="cache.info")
    broken = build_variant(tmp_path, f"leak-broken-{int(time.time())}", break_health)
    _fab("deploy", "--artifact", str(broken), "--yes", outputs=outputs, label="failed deploy", expect_ok=False)
    wait_streaming("db1", "db2")
    try:
        _fab("db.failover", "--yes", "--message", "leak test", outputs=outputs, label="db.failover")
    finally:
        restore_topology(conns)

    local = {str(p.relative_to(ROOT)): p.read_text(errors="replace") for p in (ROOT / "logs").rglob("*")
             if p.is_file()}
    assert "logs/audit.log" in local
    remote: dict[str, str] = {}
    for name in lab_inventory.hosts:
        conn = conns(name)
        journal = conn.run(f"journalctl --no-pager -o short-iso --since @{int(started)}", hide=True, warn=True,
                           in_stream=False, timeout=120)
        remote[f"{name}:journal"] = journal.stdout
        journal = conn.run(f"journalctl --no-pager -o short-iso --since @{int(site_rerun.started)} "
                           f"--until @{int(site_rerun.ended)}", hide=True, warn=True, in_stream=False, timeout=120)
        remote[f"{name}:journal during site.yml -vvv"] = journal.stdout
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


def test_the_search_finds_a_planted_secret(tmp_path):
    """The scan itself can fail: a secret written to a log is found, named by file and line."""
    secrets = _secrets()
    name, value = next(iter(secrets.items()))
    found = _hits({"planted.log": f"line one\nDATABASE_URL=postgresql://u:{value}@db1/x\n"}, secrets)
    assert found and found[0].startswith("planted.log:2: contains ")
    assert inventory.load("lab")      # the lab inventory still loads after the failover round trip
    assert Path(vault.LAB_VAULT_FILE).is_file()
