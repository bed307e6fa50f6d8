"""Provision hosts: run a playbook from playbooks/ against an inventory, checked before it starts.

Bad input (unknown playbook, inventory, limit or tag, missing vault, sshd open to any address) fails
with one line before ansible-playbook touches any host. Every run gets the strategy strategy.py
chooses (Mitogen's when it loads and supports the installed ansible-core).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from roadie.core import inventory as inventory_mod
from roadie.core import vault
from roadie.core.errors import RoadieError
from roadie.core.paths import LAB_INVENTORY, ROOT
from roadie.lab.strategy import ansible_env

PLAYBOOKS = ROOT / "playbooks"
_RECAP = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")
_TAG = re.compile(r"[A-Za-z0-9_]+")
# The networks the common role opens sshd to; its default is empty, so each inventory must name them.
SSH_SOURCES_VAR = "common_ssh_allowed_sources"


@dataclass
class PlaybookRun:
    """Outcome of one ansible-playbook run: exit status, per-host recap, duration."""

    playbook: str
    returncode: int
    duration_s: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def changed_hosts(self) -> dict[str, int]:
        return {h: c["changed"] for h, c in self.recap.items() if c.get("changed")}


def playbook_path(name: str) -> Path:
    """playbooks/<name>.yml for a bare name; anything else must be an existing playbook there."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.ya?ml)?", name):
        raise RoadieError(f"playbook must be a name from {PLAYBOOKS.name}/, got {name!r}")
    path = PLAYBOOKS / (name if name.endswith((".yml", ".yaml")) else f"{name}.yml")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PLAYBOOKS.glob("*.yml")))
        raise RoadieError(f"no playbook {name!r} (known: {known})")
    return path


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """Per-host counts from the PLAY RECAP block of ansible-playbook's output."""
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        match = _RECAP.match(line.strip()) if in_recap else None
        if match:
            counts = dict(pair.split("=") for pair in match["counts"].split())
            recap[match["host"]] = {k: int(v) for k, v in counts.items()}
    return recap


# Data-tier primaries with connected clients restart (after their replicas) only with these set: the
# restart cuts every session. `inv provision --restart-primary` sets both.
RESTART_PRIMARY_VARS = {"postgresql_restart_primary": True, "redis_restart_primary": True}


def command(playbook: Path, inv: inventory_mod.Inventory, *, check: bool = False, diff: bool = False,
            limit: str | None = None, tags: str | None = None, extra_args: tuple[str, ...] = (),
            restart_primary: bool = False) -> list[str]:
    """The ansible-playbook command line (validated arguments only)."""
    argv = [_ansible_playbook(), "-i", str(inv.source), str(playbook)]
    if restart_primary:
        argv += ["-e", json.dumps(RESTART_PRIMARY_VARS)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    if limit:
        inv.select(limit)  # an unknown host or group fails here, before any host is touched
        argv += ["--limit", limit]
    if tags:
        bad = [t for t in tags.split(",") if not _TAG.fullmatch(t)]
        if bad:
            raise RoadieError(f"bad tag {bad[0]!r}: tags are letters, digits and underscores")
        argv += ["--tags", tags]
    return argv + list(extra_args)


def _ansible_playbook() -> str:
    local = ROOT / ".venv" / "bin" / "ansible-playbook"
    return str(local) if local.exists() else "ansible-playbook"


def check_secrets(inv: inventory_mod.Inventory) -> None:
    """The inventory's vault must exist and open before a run: fail with one line otherwise."""
    vault_file = inv.source / "group_vars" / "all" / "vault.yml"
    if inv.source.resolve() == LAB_INVENTORY.resolve():
        if not vault_file.exists() or not vault.LAB_VAULT_PASSWORD_FILE.exists():
            raise RoadieError("the lab's secrets are missing; run `inv lab.up` first")
        vault.read(vault_file, vault.LAB_VAULT_PASSWORD_FILE)
        return
    if not vault_file.exists():
        raise RoadieError(f"{vault_file} is missing: copy vault.yml.example, fill it and encrypt it")
    password_file = os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE")
    if not password_file:
        raise RoadieError(f"set ANSIBLE_VAULT_PASSWORD_FILE to the {inv.name} vault password file")
    vault.read(vault_file, Path(password_file).expanduser())


def _ssh_sources_problem(sources: object) -> str | None:
    """What is wrong with one host's common_ssh_allowed_sources, or None."""
    if not isinstance(sources, list | tuple):
        return f"must be a list of CIDRs, got {sources!r}"
    if not sources:
        return "is empty"
    for entry in sources:
        try:
            network = ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            return f"has {entry!r}, which is not a CIDR"
        if network.prefixlen == 0:
            return f"allows any address ({entry})"
    return None


def check_ssh_sources(inv: inventory_mod.Inventory) -> None:
    """Every host must name the networks sshd is open to, none of them any address: one line otherwise.

    The common role refuses the same on the host, but only once ansible-playbook runs; this refuses the
    inventory before any host is touched.
    """
    failing: dict[str, list[str]] = {}
    for name in inv.hosts:
        try:
            problem = _ssh_sources_problem(inv.host_var(name, SSH_SOURCES_VAR))
        except inventory_mod.UndefinedVariable:
            problem = "is not set (the common role's default is empty)"
        if problem:
            failing.setdefault(problem, []).append(name)
    if failing:
        problem, hosts = next(iter(failing.items()))
        where = hosts[0] + (f" and {len(hosts) - 1} more hosts" if len(hosts) > 1 else "")
        raise RoadieError(f"inventory {inv.name}: {SSH_SOURCES_VAR} {problem} for {where}; list the bastion or "
                          "VPN range sshd may be reached from, as CIDRs (group_vars/all/firewall.yml)")


def prepare(name: str = "site", inventory: str | None = None, *, check: bool = False, diff: bool = False,
            limit: str | None = None, tags: str | None = None, extra_args: tuple[str, ...] = (),
            restart_primary: bool = False) -> tuple[Path, inventory_mod.Inventory, list[str]]:
    """Everything a run needs, validated before any host is touched: the playbook, the inventory (its sshd
    sources and secrets) and the ansible-playbook command line."""
    path = playbook_path(name)
    inv = inventory_mod.load(inventory)
    check_ssh_sources(inv)
    check_secrets(inv)
    argv = command(path, inv, check=check, diff=diff, limit=limit, tags=tags, extra_args=extra_args,
                   restart_primary=restart_primary)
    return path, inv, argv


def run(name: str = "site", inventory: str | None = None, *, check: bool = False, diff: bool = False,
        limit: str | None = None, tags: str | None = None, extra_args: tuple[str, ...] = (),
        restart_primary: bool = False, echo: bool = True, env: dict[str, str] | None = None) -> PlaybookRun:
    """Run a playbook, streaming its output; returns the recap. Validates everything first."""
    path, _, argv = prepare(name, inventory, check=check, diff=diff, limit=limit, tags=tags, extra_args=extra_args,
                            restart_primary=restart_primary)
    return _execute(path, argv, echo=echo, env=env)


def _execute(path: Path, argv: list[str], *, echo: bool = True, env: dict[str, str] | None = None) -> PlaybookRun:
    """Run a prepared ansible-playbook command line, streaming its output; returns the recap."""
    run_env = ansible_env(env)
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(argv, cwd=ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
    output = "".join(lines)
    return PlaybookRun(path.stem, proc.returncode, time.monotonic() - started, parse_recap(output), output)


def run_in_change(name: str = "site", inventory: str | None = None, *, check: bool = False, diff: bool = False,
                  limit: str | None = None, tags: str | None = None, extra_args: tuple[str, ...] = (),
                  restart_primary: bool = False, note: Callable[[str], None] = print) -> PlaybookRun:
    """`run`, inside the change pipeline when the fleet may be serving: the lease (so no deploy or on-call
    change runs alongside) and an audit record. A check run changes nothing and takes no lease; so does the
    first provisioning of a fleet, whose lock host has no deploy account yet (nothing of Roadie runs there)."""
    from roadie.change.pipeline import Change, lock_host
    from roadie.core import ssh

    # Bad input (playbook, limit, tags, secrets) is one line before the lock host is even reached.
    path, inv, argv = prepare(name, inventory, check=check, diff=diff, limit=limit, tags=tags,
                              extra_args=extra_args, restart_primary=restart_primary)
    if check:
        return _execute(path, argv)
    host = lock_host(inv)
    try:
        probe = ssh.connect(host)
    except ssh.AuthenticationFailed:
        note(f"provision: {host.name} has no {host.user} account yet (a first provisioning): no lease taken")
        return _execute(path, argv)
    except Exception as exc:  # any other reason to miss the lock host stops us, one line
        raise RoadieError(f"cannot take the deploy lock for provisioning: {ssh.describe_failure(host, exc)}") from None
    # The connection that found the deploy account holds the lease too.
    with probe, Change(host, "provision", hosts=[limit or "all"], message=f"playbooks/{name}.yml"
                       + (f" --tags {tags}" if tags else "") + (" --restart-primary" if restart_primary else ""),
                       conn=probe, ttl=inv.lease_ttl) as change:
        result = _execute(path, argv)
        change.detail.update(returncode=result.returncode, changed_hosts=result.changed_hosts())
        if not result.ok:
            change.result = "failed"
    return result
