"""Read the Ansible inventory: the one host list that Ansible, Fabric and the lab all share.

Parsing goes through Ansible's own InventoryManager and VariableManager, so group_vars,
host_vars, children, patterns and vault behave exactly as they do for `ansible-playbook`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roadie.core.errors import RoadieError
from roadie.core.paths import INVENTORIES, ROOT

# Inventory names an operator can give instead of a path.
NAMED_INVENTORIES = ("lab", "staging", "production")
DEFAULT_INVENTORY = "lab"

# Seconds the lease every change holds on the lock host (the first balancer) lives without a renewal: how
# fast a killed operator's lock lapses. Long enough that a slow renewal on a loaded lock host never lapses it.
LEASE_TTL_VAR = "roadie_lease_ttl"
DEFAULT_LEASE_TTL = 90
LEASE_TTL_RANGE = (10, 3600)

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")


class UndefinedVariable(RoadieError):
    """A host variable the inventory does not set (role defaults are not part of an inventory)."""


@dataclass(frozen=True)
class Host:
    """One inventory host with what it takes to reach it over SSH."""

    name: str
    address: str
    port: int
    user: str
    known_hosts: Path
    key_file: Path | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Inventory:
    """Hosts and groups of one inventory, in inventory order."""

    source: Path
    hosts: dict[str, Host]
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Looks up one templated host variable on demand (vault values are decrypted only when asked for).
    resolver: Callable[[str, str], Any] | None = field(default=None, repr=False, compare=False)
    # roadie_lease_ttl, read and checked once by `load`.
    lease_ttl: int = DEFAULT_LEASE_TTL

    @property
    def name(self) -> str:
        return self.source.name

    def select(self, pattern: str | Iterable[str]) -> list[Host]:
        """Hosts named by a host or group name, or a comma-separated list of them; unknown names fail."""
        names = [p.strip() for p in (pattern.split(",") if isinstance(pattern, str) else pattern)]
        if not names or any(not n for n in names):
            raise RoadieError(f"empty host or group name in {pattern!r}")
        chosen: list[str] = []
        for name in names:
            if name in self.hosts:
                members: Iterable[str] = [name]
            elif name in self.groups:
                members = self.groups[name]
                if not members:
                    raise RoadieError(f"group {name!r} has no hosts in inventory {self.name}")
            else:
                groups = ", ".join(sorted(g for g in self.groups if g not in ("all", "ungrouped")))
                raise RoadieError(f"unknown host or group {name!r} in inventory {self.name} (groups: {groups})")
            chosen.extend(m for m in members if m not in chosen)
        return [self.hosts[n] for n in chosen]

    def host_var(self, host: str, name: str) -> Any:
        """One of a host's variables, templated as Ansible would; undefined or unresolvable fails in one line."""
        if host not in self.hosts:
            raise RoadieError(f"inventory {self.name} has no host {host!r}")
        if self.resolver is None:
            raise RoadieError(f"inventory {self.name} was loaded without its variables")
        return self.resolver(host, name)

    def group(self, name: str) -> list[Host]:
        """Hosts of one group; an unknown or empty group fails."""
        if name not in self.groups:
            raise RoadieError(f"inventory {self.name} has no group {name!r}")
        return self.select(name)


def resolve_source(source: str | os.PathLike[str] | None = None) -> Path:
    """Path of the inventory to use: the argument, else $ANSIBLE_INVENTORY, else the lab."""
    raw = str(source) if source else os.environ.get("ANSIBLE_INVENTORY") or DEFAULT_INVENTORY
    if "," in raw:
        raise RoadieError(f"one inventory at a time, got {raw!r}")
    if raw in NAMED_INVENTORIES:
        path = INVENTORIES / raw
    else:
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (Path.cwd() / path).resolve()
    if not path.exists():
        raise RoadieError(f"inventory {raw!r} not found (looked for {path})")
    return path


def _ansible_env() -> None:
    # Roadie's ansible.cfg applies wherever the command is run from, and a broken inventory
    # file fails loudly instead of being skipped with a warning.
    os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    os.environ.setdefault("ANSIBLE_INVENTORY_UNPARSED_FAILED", "True")
    os.environ.setdefault("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "True")
    # A host (or any key) written twice in one YAML file is an error, not "the last one wins" silently.
    os.environ.setdefault("ANSIBLE_DUPLICATE_YAML_DICT_KEY", "error")


def _vault_secrets(loader) -> None:  # Ansible's DataLoader
    from ansible import constants as C
    from ansible.parsing.vault import get_file_vault_secret

    files = C.DEFAULT_VAULT_PASSWORD_FILE
    if isinstance(files, str):
        files = [files]
    secrets = []
    explicit = os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE")
    if explicit and not Path(explicit).exists():
        # ansible.cfg's lab password file may not exist yet on a fresh clone; one the operator names must.
        raise RoadieError(f"ANSIBLE_VAULT_PASSWORD_FILE={explicit}: no such file")
    for name in files or []:
        path = Path(name)
        if not path.is_absolute():
            path = ROOT / path
        if path.exists():
            secret = get_file_vault_secret(filename=str(path), vault_id="default", loader=loader)
            secret.load()
            secrets.append(("default", secret))
    loader.set_vault_secrets(secrets)


def load(source: str | os.PathLike[str] | None = None) -> Inventory:
    """Parse an inventory (a name from NAMED_INVENTORIES or a path) into hosts and groups."""
    path = resolve_source(source)
    _ansible_env()
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    warnings = io.StringIO()
    try:
        _vault_secrets(loader)
        # Ansible explains a parse failure in many warning lines; keep them for the one-line error.
        with contextlib.redirect_stderr(warnings):
            manager = InventoryManager(loader=loader, sources=[str(path)])
        variables = VariableManager(loader=loader, inventory=manager)
        hosts: dict[str, Host] = {}
        for ahost in manager.get_hosts("all"):
            hvars = variables.get_vars(host=ahost)
            templar = Templar(loader=loader, variables=hvars)
            hosts[ahost.name] = _host(path, ahost.name, hvars, templar,
                                      tuple(sorted(g.name for g in ahost.get_groups() if g.name != "all")))
        groups = {
            name: tuple(h.name for h in manager.get_hosts(name)) for name in manager.groups
        }

        def resolver(host: str, name: str) -> Any:
            hvars = variables.get_vars(host=manager.get_host(host))
            if name not in hvars:
                raise UndefinedVariable(f"inventory {path.name}: {host} has no variable {name}")
            try:
                value = Templar(loader=loader, variables=hvars).template(hvars[name])
            except AnsibleError as exc:
                raise RoadieError(f"inventory {path.name}: {host}: cannot resolve {name}: "
                                  f"{' '.join(str(exc).split())[:200]}") from None
            return str(value) if isinstance(value, str) else value  # plain str, not Ansible's tagged one
    except AnsibleError as exc:
        message = " ".join(str(exc.message if hasattr(exc, "message") else exc).split())
        cause = _first_cause(warnings.getvalue())
        raise RoadieError(f"inventory {path}: {message}" + (f" ({cause})" if cause else "")) from None
    finally:
        sys.stderr.write("".join(ln for ln in warnings.getvalue().splitlines(True) if "[DEPRECATION" in ln))
    if not hosts:
        raise RoadieError(f"inventory {path} has no hosts")
    _check_unique_addresses(path, hosts.values())
    inv = Inventory(source=path, hosts=hosts, groups=groups, resolver=resolver)
    # Read once; a bad value stops every command here, before any host is contacted.
    return dataclasses.replace(inv, lease_ttl=lease_ttl(inv))


def lease_ttl(inv: Inventory) -> int:
    """`roadie_lease_ttl` as the lock host (the first balancer) sees it, else the default; anything but whole
    seconds in range fails in one line."""
    balancers = inv.groups.get("balancer") or ()
    if not balancers or inv.resolver is None:
        return DEFAULT_LEASE_TTL
    try:
        raw = inv.host_var(balancers[0], LEASE_TTL_VAR)
    except UndefinedVariable:
        return DEFAULT_LEASE_TTL
    low, high = LEASE_TTL_RANGE
    digits = isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdecimal()
    value = int(raw) if digits else raw
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RoadieError(f"inventory {inv.name}: {LEASE_TTL_VAR} must be whole seconds from {low} to {high}, "
                          f"got {raw!r}")
    return value


def _first_cause(text: str) -> str:
    """The most useful line of Ansible's parse warnings: the YAML error and where it is."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("YAML parsing failed"):
            origin = next((ln for ln in lines[i + 1:i + 3] if ln.startswith("Origin: /")), "")
            return line + (f" at {origin.removeprefix('Origin: ')}" if origin else "")
    return ""


def _host(source: Path, name: str, hvars: dict, templar, groups: tuple[str, ...]) -> Host:
    def value(key: str, default=None):
        raw = hvars.get(key, default)
        return templar.template(raw) if isinstance(raw, str) else raw

    address = str(value("ansible_host", name))
    if not _valid_address(address):
        raise RoadieError(f"inventory {source.name}: host {name} has a bad address {address!r}")
    try:
        port = int(value("ansible_port", 22))
    except (TypeError, ValueError):
        raise RoadieError(f"inventory {source.name}: host {name} has a bad ansible_port") from None
    if not 0 < port < 65536:
        raise RoadieError(f"inventory {source.name}: host {name} has a bad ansible_port {port}")
    known_hosts = value("roadie_known_hosts_file")
    if not known_hosts:
        raise RoadieError(
            f"inventory {source.name}: host {name} has no roadie_known_hosts_file; host keys are always checked"
        )
    key = value("ansible_ssh_private_key_file") or value("ansible_private_key_file")
    return Host(
        name=name,
        address=address,
        port=port,
        # Fabric's operations may use a less privileged account than provisioning does.
        user=str(value("roadie_ssh_user") or value("ansible_user", "root")),
        known_hosts=Path(os.path.normpath(known_hosts)),
        key_file=Path(os.path.normpath(key)) if key else None,
        groups=groups,
    )


def _valid_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return bool(_HOSTNAME.fullmatch(address)) and not address.replace(".", "").isdigit()


def _check_unique_addresses(source: Path, hosts: Iterable[Host]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for host in hosts:
        key = (host.address, host.port)
        if key in seen:
            raise RoadieError(
                f"inventory {source.name}: hosts {seen[key]} and {host.name} share the address "
                f"{host.address}:{host.port}"
            )
        seen[key] = host.name
