"""The host contract: the paths, units, ports and names the roles decide and the Python side relies on.

Each constant here is a role's own default. `disagreements()` loads `roles/*/defaults` and `vars` and
names every constant that no longer matches its variable (tests/unit/test_host_contract.py runs it), so
a role change that Fabric would silently trip over fails a unit test instead. A value an inventory may
set per host (a port, a user, a timeout) is read with `host_value`, which falls back to the default here.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import yaml

from roadie.core.errors import RoadieError
from roadie.core.inventory import Inventory

# ------------------------------------------------------------------ common
STATE_DIR = "/var/lib/roadie"                       # the deploy user's own state directory
# ------------------------------------------------------------------ streaming (and what HAProxy checks)
STREAM_ROOT = PurePosixPath("/srv/stream")
STREAM_RELEASES = PurePosixPath("/srv/stream/releases")
STREAM_VENVS = PurePosixPath("/srv/stream/venvs")
STREAM_CURRENT = PurePosixPath("/srv/stream/current")
STREAM_ENV_FILE = PurePosixPath("/srv/stream/shared/stream.env")
STREAM_BACKEND = "stream"                           # the HAProxy backend that holds the stream hosts
STREAM_AUDIO_TIMEOUT = 600                          # nginx's longest stream, seconds: the default drain limit
NGINX_PORT = 80
HEALTH_PATH = "/healthz"
# ------------------------------------------------------------------ postgresql
PG_UNIT = "postgresql@15-main.service"
PG_BIN = "/usr/lib/postgresql/15/bin"
PG_DATA_DIR = "/var/lib/postgresql/15/main"
PG_BACKUP_DIR = "/var/backups/postgresql"
PG_BASE_BACKUP_DIR = "/var/backups/postgresql/base"
PG_WAL_ARCHIVE_DIR = "/var/backups/postgresql/wal"
PG_FENCE_FILE = "/var/lib/roadie/postgresql-fenced.json"
# ------------------------------------------------------------------ redis
REDIS_UNIT = "redis-server.service"
REDIS_PORT = 6379
REDIS_ADMIN_USER = "admin"

# Each constant above and the role variable it must equal.
TERMS: dict[str, tuple[str, str]] = {
    "STATE_DIR": ("common", "common_deploy_state_dir"),
    "STREAM_ROOT": ("streaming", "__streaming_root"),
    "STREAM_RELEASES": ("streaming", "__streaming_releases"),
    "STREAM_VENVS": ("streaming", "__streaming_venvs"),
    "STREAM_CURRENT": ("streaming", "__streaming_current"),
    "STREAM_ENV_FILE": ("streaming", "__streaming_env_file"),
    "STREAM_BACKEND": ("streaming", "streaming_balancer_backend"),
    "STREAM_AUDIO_TIMEOUT": ("streaming", "streaming_nginx_audio_timeout"),
    "NGINX_PORT": ("streaming", "streaming_nginx_port"),
    "HEALTH_PATH": ("haproxy", "haproxy_check_path"),
    "PG_UNIT": ("postgresql", "__postgresql_unit"),
    "PG_BIN": ("postgresql", "__postgresql_bin_dir"),
    "PG_DATA_DIR": ("postgresql", "__postgresql_data_dir"),
    "PG_BACKUP_DIR": ("postgresql", "postgresql_backup_dir"),
    "PG_BASE_BACKUP_DIR": ("postgresql", "__postgresql_backup_base_dir"),
    "PG_WAL_ARCHIVE_DIR": ("postgresql", "__postgresql_wal_archive_dir"),
    "PG_FENCE_FILE": ("postgresql", "__postgresql_fence_file"),
    "REDIS_UNIT": ("redis", "__redis_service"),
    "REDIS_PORT": ("redis", "redis_port"),
    "REDIS_ADMIN_USER": ("redis", "redis_admin_user"),
}

# The health check as the balancer makes it: through nginx on the host.
HEALTH_URL = f"http://127.0.0.1{'' if NGINX_PORT == 80 else f':{NGINX_PORT}'}{HEALTH_PATH}"


def value(name: str) -> Any:
    """The Python side's value of a contract term, by its constant's name."""
    if name not in TERMS:
        raise RoadieError(f"no host-contract term {name!r}")
    return globals()[name]


def host_value(inv: Inventory, host: str, name: str) -> Any:
    """The term's role variable as the inventory sets it for `host`, else the role's default here."""
    _, variable = TERMS[name]
    try:
        return inv.host_var(host, variable)
    except RoadieError:
        return value(name)


def role_variables(roles: Path) -> dict[str, dict[str, Any]]:
    """Every role's defaults/main.yml and vars/main.yml (vars win), as written, by role name."""
    found: dict[str, dict[str, Any]] = {}
    for role in sorted(p for p in roles.iterdir() if p.is_dir()):
        merged: dict[str, Any] = {}
        for part in ("defaults", "vars"):
            path = role / part / "main.yml"
            if path.is_file():
                merged.update(yaml.safe_load(path.read_text()) or {})
        found[role.name] = merged
    return found


def _rendered(raw: Any, variables: dict[str, Any]) -> Any:
    """A role value with its references to the role's own variables filled in (as Ansible would)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - not HTML
    for _ in range(8):                              # references nest a few levels deep at most
        if not isinstance(raw, str) or "{{" not in raw:
            return raw
        raw = env.from_string(raw).render(variables)
    raise RoadieError(f"a role value keeps referring to itself: {raw!r}")


def disagreements(roles: Path) -> list[str]:
    """One line per term whose constant differs from its role variable (or whose variable is gone)."""
    variables = role_variables(roles)
    lines = []
    for name, (role, variable) in TERMS.items():
        own = variables.get(role, {})
        if variable not in own:
            lines.append(f"{name}: roles/{role} no longer defines {variable}")
            continue
        try:
            theirs = _rendered(own[variable], own)
        except jinja2.exceptions.UndefinedError as exc:
            lines.append(f"{name}: roles/{role} {variable} cannot be read without a host ({exc})")
            continue
        ours = value(name)
        if str(theirs) != str(ours):
            lines.append(f"{name}: Python has {str(ours)!r}, roles/{role} {variable} is {str(theirs)!r}")
    return lines
