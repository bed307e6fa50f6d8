"""The PostgreSQL and Redis preflights refuse the example vault's CHANGE-ME passwords, by name, never by value.

The roles' own preflight tasks run here through ansible-playbook on localhost (assertions and set_fact only:
they run on the controller and touch no host), with the variables the roles' defaults read from the vault.
"""

import json
import os
import subprocess

import pytest
import yaml

from roadie.core.paths import ROOT

ANSIBLE_PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"
EXAMPLE_VAULT = ROOT / "inventories" / "production" / "group_vars" / "all" / "vault.yml.example"
ROLES = {
    "postgresql": ["postgresql_app_password", "postgresql_replication_password"],
    "redis": ["redis_app_password", "redis_admin_password", "redis_replica_password"],
}


def _placeholder_tasks(role: str) -> list[dict]:
    tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "preflight.yml").read_text())
    chosen = [t for t in tasks if "CHANGE-ME" in t["name"] or "placeholder" in t["name"]]
    assert chosen, f"{role}: no placeholder check in tasks/preflight.yml"
    return chosen


def _run_preflights(tmp_path, vault: dict[str, str]) -> dict[str, dict]:
    """The placeholder checks of both roles with these vault values: {task name: localhost's result}."""
    role_vars = {}
    for role, names in ROLES.items():
        defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
        role_vars.update({name: defaults[name] for name in names})     # "{{ vault_... }}", as the role reads it
    play = {"name": "Placeholder checks", "hosts": "localhost", "gather_facts": False, "ignore_errors": True,
            "vars": {**vault, **role_vars}, "tasks": [t for role in ROLES for t in _placeholder_tasks(role)]}
    (tmp_path / "play.yml").write_text(yaml.safe_dump([play], sort_keys=False))
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"), "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_NOCOLOR": "1"}
    result = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml")],
                            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for value in vault.values():
        assert value not in result.stdout + result.stderr     # no password is ever shown
    report = json.loads(result.stdout)
    return {t["task"]["name"]: t["hosts"]["localhost"] for t in report["plays"][0]["tasks"]}


def _example_values() -> dict[str, str]:
    example = yaml.safe_load(EXAMPLE_VAULT.read_text())
    assert set(example.values()) == {"CHANGE-ME"}
    # Each value made unique (and its case changed) so the output can be searched for it.
    return {name: f"{value.lower()}-{i:02d}-unfilled-example" for i, (name, value) in enumerate(example.items())}


def test_the_example_vaults_passwords_are_refused_by_name(tmp_path):
    results = _run_preflights(tmp_path, _example_values())
    failed = [r for r in results.values() if r.get("failed")]
    assert len(failed) == 2, results
    messages = " ".join(r["msg"] for r in failed)
    for names in ROLES.values():
        for name in names:
            assert f"{name} (vault_{name})" in messages, messages
    assert all("\n" not in r["msg"] and "CHANGE-ME placeholder" in r["msg"] for r in failed)


@pytest.mark.parametrize("placeholder", ["CHANGE-ME", "Change-Me"])
def test_one_placeholder_password_is_named_alone(tmp_path, placeholder):
    vault = {name: f"a-real-password-for-{name}" for name in yaml.safe_load(EXAMPLE_VAULT.read_text())}
    vault["vault_redis_admin_password"] = f"{placeholder}-set-me-later"
    failed = [r for r in _run_preflights(tmp_path, vault).values() if r.get("failed")]
    assert [r["msg"] for r in failed] == [
        "On localhost, redis_admin_password (vault_redis_admin_password) still contains the example vault's "
        "CHANGE-ME placeholder: set real passwords in the inventory's vault.yml"]


def test_real_passwords_pass(tmp_path):
    vault = {name: f"a-real-password-for-{name}" for name in yaml.safe_load(EXAMPLE_VAULT.read_text())}
    results = _run_preflights(tmp_path, vault)
    assert results and not any(r.get("failed") for r in results.values()), results
