"""Hostile and careless input to the toolkit: every case exits non-zero with one clear line, and no lab host
changes (a state snapshot of every host before the whole table and after it must be equal).

The table covers CLI flags (fab and inv), broken inventories, role variables of the wrong type (caught by
the roles' argument specs), tampered release artifacts and a missing or wrong vault password. The real
.lab/vault-pass is never touched: wrong copies sit in a temporary directory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from roadie.core import ssh
from roadie.core.paths import ROOT
from roadie.deploy import balancer, stream_host
from roadie.lab import provision
from tests.lab.hosts import run_with_secret

VENV = ROOT / ".venv" / "bin"
LAB = ROOT / "inventories" / "lab"

# Files whose bytes say how a host is configured (those a host does not have are reported as absent).
CONFIG_FILES = [
    "/etc/nftables.conf", "/etc/ssh/sshd_config", "/etc/sudoers.d/deploy", "/etc/haproxy/haproxy.cfg",
    "/etc/nginx/sites-available/stream.conf", "/etc/redis/redis.conf", "/etc/redis/users.acl",
    "/etc/postgresql/15/main/pg_hba.conf", "/etc/postgresql/15/main/conf.d/50-roadie.conf",
    "/etc/systemd/system/stream.service", "/srv/stream/shared/stream.env", "/etc/passwd", "/etc/group",
    "/var/log/roadie/audit.log", "/var/lib/roadie/deploy.lock.json",
]
UNITS = ["ssh", "nftables", "haproxy", "nginx", "stream", "postgresql", "redis-server"]
SNAPSHOT_SCRIPT = r"""
import hashlib, json, os, subprocess, sys
files, links, units = json.loads(sys.argv[1])
state = {}
for path in files:
    try:
        with open(path, "rb") as f:
            state[path] = hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        state[path] = "absent"
    except PermissionError:  # a non-root connection (least privilege): still the same before and after
        state[path] = "unreadable"
for path in links:
    state[path] = os.readlink(path) if os.path.islink(path) else "no link"
releases = os.path.dirname(links[0]) + "/releases"
state["releases"] = sorted(os.listdir(releases)) if os.path.isdir(releases) else []
for unit in units:
    state["unit " + unit] = subprocess.run(["systemctl", "is-active", unit], capture_output=True,
                                           text=True).stdout.strip()
print(json.dumps(state, sort_keys=True))
"""


def _snapshot(inv, conns, secrets) -> dict:
    command = ssh.python_command(SNAPSHOT_SCRIPT, json.dumps([
        CONFIG_FILES, [str(stream_host.CURRENT), str(stream_host.PREVIOUS)], UNITS]))
    state: dict = {}
    for name, result in ssh.run_parallel(list(inv.hosts.values()), command).items():
        assert result.ok, f"{name}: snapshot failed: {result.error or result.stderr.strip()}"
        state[name] = json.loads(result.stdout)
    lb = inv.group("balancer")[0].name
    state["haproxy"] = {name: (s.status, s.weight) for name, s in balancer.Balancer(conns(lb)).servers().items()}
    for host in inv.group("database_primary"):
        sql = ("'SELECT (SELECT count(*) FROM tracks), (SELECT count(*) FROM plays), "
               "(SELECT count(*) FROM schema_migrations)'")
        counts = conns(host.name).run(f"if [ $(id -u) = 0 ]; then runuser -u postgres -- psql -d stream -tAc {sql}; "
                                      f"else sudo -n -u postgres psql -d stream -tAc {sql}; fi", hide=True, warn=True,
                                      in_stream=False)
        assert counts.ok, counts.stderr
        state[f"pg {host.name}"] = counts.stdout.strip()
    for host in inv.group("cache"):
        # Counters only: cached catalogue keys expire on their own while the table runs.
        keys = run_with_secret(conns(host.name), "redis-cli --no-auth-warning --user admin -h 127.0.0.1 "
                               "--scan --pattern 'plays:*' | sort | xargs -r redis-cli --no-auth-warning "
                               "--user admin -h 127.0.0.1 MGET", "REDISCLI_AUTH",
                               secrets["vault_redis_admin_password"])
        assert keys.ok, keys.stderr
        state[f"redis {host.name}"] = hashlib.sha256(keys.stdout.encode()).hexdigest()
    return state


# ------------------------------------------------------------------ the hostile material


def _inventory_copy(root: Path, name: str, hosts_edit=None, vars_edit=None) -> Path:
    target = root / "inventories" / name
    shutil.copytree(LAB, target, ignore=shutil.ignore_patterns("zz-*"))
    if hosts_edit:
        hosts = target / "hosts.yml"
        hosts.write_text(hosts_edit(hosts.read_text()))
    if vars_edit:
        path = target / "group_vars" / "all" / "vars.yml"
        path.write_text(vars_edit(path.read_text()))
    return target


def _replace(old: str, new: str):
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


def _split(artifact: Path) -> tuple[bytes, bytes]:
    with tarfile.open(artifact, "r:gz") as outer:
        return (outer.extractfile("manifest.json").read(), outer.extractfile("payload.tar.gz").read())


def _pack(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as outer:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            outer.addfile(info, io.BytesIO(data))
    return path


def _with_payload(manifest: bytes, payload: bytes) -> bytes:
    data = json.loads(manifest)
    data.update(payload_sha256=hashlib.sha256(payload).hexdigest(), payload_size=len(payload))
    return json.dumps(data).encode()


def _traversal_payload(payload: bytes) -> bytes:
    """The real payload plus one member that climbs out of the release directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as src, \
            tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        evil = b"* * * * * root touch /tmp/pwned\n"
        info = tarfile.TarInfo("../../../etc/cron.d/roadie-pwned")
        info.size = len(evil)
        dst.addfile(info, io.BytesIO(evil))
    return out.getvalue()


def _one_role_playbook(root: Path, role: str, hosts: str) -> Path:
    path = root / f"only-{role}.yml"
    path.write_text(f"---\n- name: Only {role}\n  hosts: {hosts}\n  gather_facts: false\n  roles:\n"
                    f"    - role: {role}\n")
    return path


@pytest.fixture(scope="module")
def material(stack, tmp_path_factory) -> dict[str, str]:
    """Broken inventories, artifacts, vault password files and playbooks, by placeholder name."""
    root = tmp_path_factory.mktemp("hostile-toolkit")
    (root / ".lab").symlink_to(ROOT / ".lab")  # the copies' group_vars find the lab key and known_hosts
    ctx: dict[str, str] = {}
    ctx["inv_no_balancer"] = _inventory_copy(root, "no-balancer", _replace(
        "    balancer:\n      hosts:\n        lb1:\n          ansible_host: 10.87.0.10\n", ""))
    ctx["inv_no_stream"] = _inventory_copy(root, "no-stream", _replace(
        "    stream:\n      hosts:\n        stream1:\n          ansible_host: 10.87.0.101\n        stream2:\n"
        "          ansible_host: 10.87.0.102\n        stream3:\n          ansible_host: 10.87.0.103\n", ""))
    ctx["inv_dup_host"] = _inventory_copy(root, "dup-host", _replace(
        "        stream3:\n          ansible_host: 10.87.0.103\n",
        "        stream3:\n          ansible_host: 10.87.0.103\n"
        "        stream3:\n          ansible_host: 10.87.0.20\n"))
    ctx["inv_dup_address"] = _inventory_copy(root, "dup-address", _replace("10.87.0.103", "10.87.0.102"))
    ctx["inv_bad_address"] = _inventory_copy(root, "bad-address", _replace("10.87.0.103", "10.87.0.999"))
    ctx["inv_bad_name"] = _inventory_copy(root, "bad-name", _replace("10.87.0.103", "stream3;reboot"))
    ctx["inv_port_range"] = _inventory_copy(root, "port-range", _replace(
        "ansible_host: 10.87.0.103\n", "ansible_host: 10.87.0.103\n          ansible_port: 70000\n"))
    ctx["inv_port_text"] = _inventory_copy(root, "port-text", _replace(
        "ansible_host: 10.87.0.103\n", "ansible_host: 10.87.0.103\n          ansible_port: twenty-two\n"))
    ctx["inv_no_known_hosts"] = _inventory_copy(root, "no-known-hosts", vars_edit=lambda t: "\n".join(
        line for line in t.splitlines() if "known_hosts" not in line) + "\n")
    ctx["inv_known_hosts_gone"] = _inventory_copy(root, "known-hosts-gone", vars_edit=_replace(
        'ssh/known_hosts"', 'ssh/known_hosts.gone"'))
    ctx["inv_copy"] = _inventory_copy(root, "lab-copy")

    artifact = Path(stack["artifact"])
    release_id = stack["manifest"].release_id
    ctx["release"] = release_id
    manifest, payload = _split(artifact)
    name = artifact.name
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0xFF
    ctx["art_tampered"] = _pack(root / "tampered" / name, {"manifest.json": manifest,
                                                           "payload.tar.gz": bytes(flipped)})
    ctx["art_truncated"] = root / "truncated" / name
    ctx["art_truncated"].parent.mkdir()
    ctx["art_truncated"].write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
    ctx["art_renamed"] = root / "renamed" / "20250101000000-0000000.tar.gz"
    ctx["art_renamed"].parent.mkdir()
    shutil.copy(artifact, ctx["art_renamed"])
    ctx["art_bad_json"] = _pack(root / "bad-json" / name, {"manifest.json": b"{release_id: nope",
                                                           "payload.tar.gz": payload})
    wrong_size = json.loads(manifest)
    wrong_size["payload_size"] += 1
    ctx["art_wrong_size"] = _pack(root / "wrong-size" / name, {"manifest.json": json.dumps(wrong_size).encode(),
                                                               "payload.tar.gz": payload})
    ctx["art_not_tar"] = root / "not-tar" / name
    ctx["art_not_tar"].parent.mkdir()
    ctx["art_not_tar"].write_bytes(gzip.compress(b"this is not a tar archive\n" * 100))
    evil = _traversal_payload(payload)
    ctx["art_traversal"] = _pack(root / "traversal" / name, {"manifest.json": _with_payload(manifest, evil),
                                                             "payload.tar.gz": evil})
    ctx["art_extra"] = _pack(root / "extra" / name, {"manifest.json": manifest, "payload.tar.gz": payload,
                                                     "install.sh": b"#!/bin/sh\nrm -rf /\n"})

    wrong = root / "vault-pass.wrong"
    wrong.write_text("not-the-lab-password\n")
    wrong.chmod(0o600)
    empty = root / "vault-pass.empty"
    empty.write_text("")
    ctx.update(vault_wrong=wrong, vault_empty=empty, vault_missing=root / "vault-pass.missing")

    for role, hosts in (("redis", "cache"), ("haproxy", "balancer"), ("common", "all"),
                        ("streaming", "stream"), ("postgresql", "database")):
        ctx[f"pb_{role}"] = _one_role_playbook(root, role, hosts)
    return {k: str(v) for k, v in ctx.items()}


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    line: str                     # the clear line: roadie errors start with it, ansible prints it
    env: dict[str, str] = field(default_factory=dict)
    ansible: bool = False         # ansible-playbook's own output, where the line is one of many
    unset: tuple[str, ...] = ()
    xfail: str = ""               # a known bug: the reason, so the case flips to XPASS (a failure) when fixed


def fab(*args: str) -> tuple[str, ...]:
    return ("fab", *args)


def inv(*args: str) -> tuple[str, ...]:
    return ("inv", *args)


def playbook(role: str, hosts: str, extra: dict) -> tuple[str, ...]:
    return ("ansible-playbook", "-i", str(LAB), "{pb_" + role + "}", "--limit", hosts, "--check",
            "-e", json.dumps(extra))


def _type_error(var: str, got: str, wanted: str) -> str:
    return f"argument '{var}' is of type {got} and we were unable to convert to {wanted}"


CASES = [
    # CLI flags
    Case("deploy-batch-zero", fab("deploy", "--release", "{release}", "--batch", "0", "--yes"),
         "error: --batch must be at least 1, got '0'"),
    Case("deploy-batch-text", fab("deploy", "--release", "{release}", "--batch", "abc", "--yes"),
         "error: --batch must be a host count or a percentage like 25%, got 'abc'"),
    Case("deploy-batch-percent", fab("deploy", "--release", "{release}", "--batch", "150%", "--yes"),
         "error: --batch percentage must be 1%..100%, got '150%'"),
    Case("deploy-min-serving", fab("deploy", "--release", "{release}", "--min-serving", "3", "--yes"),
         "error: --min-serving 3 is impossible with 3 hosts"),
    Case("deploy-health-timeout", fab("deploy", "--release", "{release}", "--health-timeout", "soon", "--yes"),
         "error: bad number: could not convert string to float: 'soon'"),
    Case("deploy-release-traversal", fab("deploy", "--release", "../../etc/passwd", "--yes"),
         "error: bad release id '../../etc/passwd'"),
    Case("deploy-release-shell", fab("deploy", "--release", "x;reboot", "--yes"), "error: bad release id 'x;reboot'"),
    Case("deploy-two-sources", fab("deploy", "--release", "{release}", "--artifact", "{art_tampered}", "--yes"),
         "error: give one of --release, --artifact or --build"),
    Case("deploy-unknown-flag", fab("deploy", "--no-such-flag"), "No idea what '--no-such-flag' is!"),
    Case("rollback-traversal", fab("rollback", "--to", "../x", "--yes"), "error: bad release id '../x'"),
    Case("drain-unknown-host", fab("drain", "nosuchhost"), "error: unknown host 'nosuchhost' in inventory lab"),
    Case("drain-database-host", fab("drain", "db1"), "error: db1 is not a stream host"),
    Case("restart-unknown-group", fab("restart", "--group", "nosuch", "--yes"),
         "error: unknown host or group 'nosuch'"),
    Case("status-empty-name", fab("status", "--group", "stream,,db1"), "error: empty host or group name in"),
    Case("disk-threshold", fab("disk", "--threshold", "150"), "error: --threshold must be 0.01..100, got 150"),
    Case("logs-unit-injection", fab("logs", "stream1", "--unit", "ssh; reboot"), "error: bad unit name 'ssh; reboot'"),
    Case("logs-lines", fab("logs", "stream1", "--lines", "-5"), "error: --lines must be 1..100000, got -5"),
    Case("run-unconfirmed", fab("run", "id", "--group", "stream"), "error: run it on 3 hosts: pass --yes to confirm"),
    Case("failover-unconfirmed", fab("db.failover"), "error: promote db2 and fence db1: pass --yes to confirm"),
    Case("maintenance-retry-after", fab("maintenance.on", "--retry-after", "-3", "--yes"),
         "error: --retry-after must be 1..86400, got -3"),
    Case("provision-unknown-playbook", inv("provision", "--playbook", "nosuch"), "error: no playbook 'nosuch'"),
    Case("provision-unknown-limit", inv("provision", "--limit", "nosuchgroup"),
         "error: unknown host or group 'nosuchgroup'"),
    Case("provision-bad-tag", inv("provision", "--tags", "a;b"), "error: bad tag 'a;b'"),
    # inventories
    Case("inventory-missing-balancer", fab("deploy", "--inventory", "{inv_no_balancer}", "--release", "{release}",
                                           "--yes"), "error: inventory no-balancer has no group 'balancer'"),
    Case("inventory-missing-stream", fab("deploy", "--inventory", "{inv_no_stream}", "--release", "{release}",
                                         "--yes"), "error: inventory no-stream has no group 'stream'"),
    Case("inventory-duplicate-host", fab("deploy", "--inventory", "{inv_dup_host}", "--release", "{release}", "--yes"),
         "Found duplicate mapping key 'stream3'"),
    Case("inventory-duplicate-address", fab("deploy", "--inventory", "{inv_dup_address}", "--release", "{release}",
                                            "--yes"), "error: inventory dup-address: hosts stream2 and stream3 share "
                                                      "the address 10.87.0.102:22"),
    Case("inventory-bad-address", fab("check", "--inventory", "{inv_bad_address}"),
         "error: inventory bad-address: host stream3 has a bad address '10.87.0.999'"),
    Case("inventory-shell-address", fab("check", "--inventory", "{inv_bad_name}"),
         "error: inventory bad-name: host stream3 has a bad address 'stream3;reboot'"),
    Case("inventory-port-range", fab("check", "--inventory", "{inv_port_range}"),
         "error: inventory port-range: host stream3 has a bad ansible_port 70000"),
    Case("inventory-port-text", fab("status", "--inventory", "{inv_port_text}"),
         "error: inventory port-text: host stream3 has a bad ansible_port"),
    Case("inventory-no-known-hosts", fab("deploy", "--inventory", "{inv_no_known_hosts}", "--release", "{release}",
                                         "--yes"), "error: inventory no-known-hosts: host lb1 has no "
                                                   "roadie_known_hosts_file; host keys are always checked"),
    Case("inventory-known-hosts-gone", fab("deploy", "--inventory", "{inv_known_hosts_gone}", "--release",
                                           "{release}", "--yes"),
         "known_hosts.gone is missing; host keys are always checked"),
    # role variables of the wrong type, caught by the argument specs before any task
    Case("role-redis-port", playbook("redis", "cache", {"redis_port": "abc"}),
         _type_error("redis_port", "str", "int"), ansible=True),
    Case("role-redis-appendonly", playbook("redis", "cache", {"redis_appendonly": "maybe"}),
         _type_error("redis_appendonly", "str", "bool"), ansible=True),
    Case("role-redis-bind", playbook("redis", "cache", {"redis_bind_addresses": {"a": 1}}),
         _type_error("redis_bind_addresses", "dict", "list"), ansible=True),
    Case("role-redis-loglevel", playbook("redis", "cache", {"redis_loglevel": "chatty"}),
         "value of redis_loglevel must be one of: debug, verbose, notice, warning, got: chatty", ansible=True),
    Case("role-haproxy-maxconn", playbook("haproxy", "balancer", {"haproxy_maxconn": [1]}),
         _type_error("haproxy_maxconn", "list", "int"), ansible=True),
    Case("role-common-cache-time", playbook("common", "all", {"common_apt_cache_valid_time": "soon"}),
         _type_error("common_apt_cache_valid_time", "str", "int"), ansible=True),
    Case("role-streaming-redis-port", playbook("streaming", "stream", {"streaming_redis_port": "x"}),
         _type_error("streaming_redis_port", "str", "int"), ansible=True),
    Case("role-postgresql-connections", playbook("postgresql", "database", {"postgresql_max_connections": "many"}),
         _type_error("postgresql_max_connections", "str", "int"), ansible=True,
         xfail="roles/postgresql/meta/argument_specs.yml: the default of postgresql_work_mem divides by "
               "postgresql_max_connections while the spec itself is templated, so a str fails with 'Error "
               "rendering template: unsupported operand type(s) for /' before the type check can say which "
               "argument is wrong"),
    # release artifacts
    Case("artifact-tampered", fab("deploy", "--artifact", "{art_tampered}", "--yes"),
         "payload sha256 does not match the manifest (tampered or corrupt)"),
    Case("artifact-truncated", fab("deploy", "--artifact", "{art_truncated}", "--yes"),
         "not a readable release archive (truncated or corrupt)"),
    Case("artifact-renamed", fab("deploy", "--artifact", "{art_renamed}", "--yes"),
         "error: 20250101000000-0000000.tar.gz: the manifest names release {release}"),
    Case("artifact-manifest-not-json", fab("deploy", "--artifact", "{art_bad_json}", "--yes"),
         "manifest.json is not valid JSON"),
    Case("artifact-manifest-wrong-size", fab("deploy", "--artifact", "{art_wrong_size}", "--yes"),
         "the manifest says"),
    Case("artifact-not-a-tarball", fab("deploy", "--artifact", "{art_not_tar}", "--yes"),
         "not a readable release archive"),
    Case("artifact-path-traversal", fab("deploy", "--artifact", "{art_traversal}", "--yes"),
         "payload entry '../../../etc/cron.d/roadie-pwned' would land outside the release directory"),
    Case("artifact-extra-member", inv("release.verify", "{art_extra}"),
         "expected exactly manifest.json and payload.tar.gz, found install.sh"),
    # vault
    Case("vault-wrong-password", inv("provision", "--inventory", "{inv_copy}", "--check"),
         "Decryption failed (no vault secrets were found that could decrypt)",
         env={"ANSIBLE_VAULT_PASSWORD_FILE": "{vault_wrong}"}),
    Case("vault-password-unset", inv("provision", "--inventory", "{inv_copy}", "--check"),
         "error: set ANSIBLE_VAULT_PASSWORD_FILE", unset=("ANSIBLE_VAULT_PASSWORD_FILE",)),
    Case("vault-password-missing", inv("provision", "--inventory", "{inv_copy}", "--check"),
         "ANSIBLE_VAULT_PASSWORD_FILE={vault_missing}: no such file",
         env={"ANSIBLE_VAULT_PASSWORD_FILE": "{vault_missing}"}),
    Case("vault-password-empty", inv("provision", "--inventory", "{inv_copy}", "--check"),
         "Invalid vault password was provided from file ({vault_empty})",
         env={"ANSIBLE_VAULT_PASSWORD_FILE": "{vault_empty}"}),
    Case("vault-lab-wrong-password", inv("provision", "--check", "--limit", "cache1"),
         "Decryption failed (no vault secrets were found that could decrypt)",
         env={"ANSIBLE_VAULT_PASSWORD_FILE": "{vault_wrong}"}),
    Case("vault-ansible-wrong-password", playbook("redis", "cache", {}), "Decryption failed",
         env={"ANSIBLE_VAULT_PASSWORD_FILE": "{vault_wrong}"}, ansible=True),
]


@pytest.fixture(scope="module")
def before(stack, lab_inventory, conns, secrets):
    """Every host's state before the first case of the table runs."""
    return _snapshot(lab_inventory, conns, secrets)


@pytest.fixture(scope="module")
def ran() -> set[str]:
    """Ids of the cases this module has run: the no-change check runs the others itself."""
    return set()


def _fill(text: str, ctx: dict[str, str]) -> str:
    """`{name}` placeholders replaced from the material (JSON braces left alone)."""
    return re.sub(r"\{(\w+)\}", lambda m: ctx[m[1]], text)


def _run(case: Case, ctx: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in case.unset}
    env.update({k: _fill(v, ctx) for k, v in case.env.items()})
    # JSON results keep each of Ansible's messages on one line.
    env.update(ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    argv = [str(VENV / case.argv[0]), *(_fill(a, ctx) for a in case.argv[1:])]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180, env=env,
                          stdin=subprocess.DEVNULL)


def test_the_table_has_enough_cases():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
    for c in CASES])
def test_hostile_input_is_one_clear_line(case, material, before, ran):
    ran.add(case.id)
    result = _run(case, material)
    everything = result.stdout + result.stderr
    line = _fill(case.line, material)
    assert result.returncode != 0, everything
    assert "Traceback" not in everything, everything
    if case.ansible:
        assert any(line in text for text in everything.splitlines()), everything[-3000:]
        # No task ran anywhere: the recap (when the play got that far) shows nothing ok and nothing changed.
        assert all(c["ok"] == 0 and c["changed"] == 0 for c in provision.parse_recap(everything).values()), \
            everything[-2000:]
    else:
        lines = [text for text in result.stderr.splitlines() if text.strip()]
        assert len(lines) == 1, result.stderr
        assert line in lines[0], lines[0]
        assert lines[0].startswith(("error: ", "No idea what")), lines[0]


def test_no_host_changed(before, material, ran, lab_inventory, conns, secrets):
    """Every case of the table has run (the ones this session did not select run here, their output unread),
    and every host's state is what it was before the first."""
    for case in CASES:
        if case.id not in ran:
            ran.add(case.id)
            _run(case, material)
    after = _snapshot(lab_inventory, conns, secrets)
    changed = [f"{host}: {key}: {before[host].get(key) if isinstance(before[host], dict) else before[host]!r} -> "
               f"{value!r}" for host, state in after.items()
               for key, value in (state.items() if isinstance(state, dict) else [("", state)])
               if (before[host].get(key) if isinstance(before[host], dict) else before[host]) != value]
    assert after == before, "\n".join(changed) or "hosts differ"
