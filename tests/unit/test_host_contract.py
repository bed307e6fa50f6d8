"""The host contract (roadie/core/contract.py) against the roles' defaults and vars, and the deploy code against it."""

from __future__ import annotations

import shutil

import pytest

from roadie.core import contract
from roadie.core.paths import ROOT
from roadie.deploy import stream_host

ROLES = ROOT / "roles"


def test_every_value_the_python_side_shares_with_the_roles_matches_the_roles():
    assert contract.disagreements(ROLES) == []


def test_the_deploy_code_writes_where_the_contract_lays_releases_out():
    # The contract's terms themselves, not copies: the test above holds them to the streaming role's layout.
    layout = [stream_host.BASE, stream_host.RELEASES, stream_host.VENVS, stream_host.CURRENT, stream_host.ENV_FILE]
    terms = ["STREAM_ROOT", "STREAM_RELEASES", "STREAM_VENVS", "STREAM_CURRENT", "STREAM_ENV_FILE"]
    assert [str(path) for path in layout] == [str(contract.value(term)) for term in terms]


@pytest.fixture
def roles_copy(tmp_path):
    copy = tmp_path / "roles"
    shutil.copytree(ROLES, copy, ignore=shutil.ignore_patterns("molecule"))
    return copy


def _rewrite(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} no longer holds {old!r}: update this test"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("role", "part", "old", "new", "term"), [
    ("streaming", "vars", "__streaming_root: /srv/stream", "__streaming_root: /srv/audio", "STREAM_ROOT"),
    ("redis", "defaults", "redis_port: 6379", "redis_port: 6380", "REDIS_PORT"),
    ("redis", "defaults", "redis_admin_user: admin", "redis_admin_user: ops", "REDIS_ADMIN_USER"),
    ("haproxy", "defaults", "haproxy_check_path: /healthz", "haproxy_check_path: /health", "HEALTH_PATH"),
    # A variable others are built from: the unit, the binaries and the data directory all move with it.
    ("postgresql", "vars", '__postgresql_version: "15"', '__postgresql_version: "16"', "PG_UNIT"),
    ("postgresql", "defaults", "postgresql_backup_dir: /var/backups/postgresql",
     "postgresql_backup_dir: /srv/backups", "PG_WAL_ARCHIVE_DIR"),
    ("common", "defaults", "common_deploy_state_dir: /var/lib/roadie", "common_deploy_state_dir: /var/lib/ops",
     "STATE_DIR"),
])
def test_a_changed_role_default_is_named(roles_copy, role, part, old, new, term):
    _rewrite(roles_copy / role / part / "main.yml", old, new)
    found = contract.disagreements(roles_copy)
    assert any(line.startswith(f"{term}: Python has") for line in found), found


def test_a_renamed_role_variable_is_named(roles_copy):
    _rewrite(roles_copy / "postgresql" / "vars" / "main.yml", "__postgresql_fence_file:", "__postgresql_fence:")
    assert "PG_FENCE_FILE: roles/postgresql no longer defines __postgresql_fence_file" in \
        contract.disagreements(roles_copy)


def test_an_inventory_value_wins_over_the_role_default():
    class Inv:
        def host_var(self, host, name):
            if name == "redis_port":
                return 6380
            raise contract.RoadieError(f"{name} undefined")

    assert contract.host_value(Inv(), "cache1", "REDIS_PORT") == 6380
    assert contract.host_value(Inv(), "cache1", "REDIS_ADMIN_USER") == "admin"
