"""SSH to the lab hosts: the lab's key pair, the hosts' keys read through `docker exec` (a trusted
channel) into the lab's own known_hosts, and the ssh command line for an interactive login.

Every SSH connection, Ansible's and Fabric's, checks the host keys strictly against that known_hosts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from roadie.core import inventory as inventory_mod
from roadie.core.errors import RoadieError
from roadie.core.paths import LAB_INVENTORY, LAB_KEY, LAB_KNOWN_HOSTS, LAB_SSH_DIR, LAB_STATE
from roadie.lab.engine import exec_on, run


def known_hosts_lines(host_keys: dict[str, tuple[str, int, Iterable[str]]]) -> list[str]:
    """known_hosts lines, one per host key: `name,address keytype base64`, `[name]:port,...` off port 22.

    `host_keys` maps a host name to (address, port, public key lines as in ssh_host_*_key.pub).
    """
    lines = []
    for name in sorted(host_keys):
        address, port, keys = host_keys[name]
        names = [name, address] if port == 22 else [f"[{name}]:{port}", f"[{address}]:{port}"]
        for key in sorted(keys):
            parts = key.split()
            if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
                raise RoadieError(f"{name}: unexpected public host key {key[:40]!r}")
            lines.append(f"{','.join(names)} {parts[0]} {parts[1]}")
    return lines


def host_keys(host: str) -> list[str]:
    out = exec_on(host, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub").stdout
    keys = [line.strip() for line in out.splitlines() if line.strip()]
    if not keys:
        raise RoadieError(f"{host}: no SSH host keys found")
    return keys


def ensure_lab_key() -> Path:
    """The lab's SSH key pair (generated once, git-ignored)."""
    LAB_SSH_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(LAB_STATE, 0o700)
    os.chmod(LAB_SSH_DIR, 0o700)
    if not LAB_KEY.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "roadie-lab", "-f", str(LAB_KEY)])
    return LAB_KEY


def write_known_hosts(lines: list[str], path: Path = LAB_KNOWN_HOSTS) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def ssh_argv(host_name: str, command: Iterable[str] = ()) -> list[str]:
    """The ssh command line for an interactive login to a lab host, host keys checked."""
    inv = inventory_mod.load(LAB_INVENTORY)
    host = inv.select(host_name)
    if len(host) != 1 or host[0].name != host_name:
        raise RoadieError(f"{host_name!r} is a group; name one host")
    h = host[0]
    argv = ["ssh", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={h.known_hosts}",
            "-o", "IdentitiesOnly=yes", "-p", str(h.port), "-l", h.user]
    if h.key_file:
        argv += ["-i", str(h.key_file)]
    return [*argv, h.address, *command]
