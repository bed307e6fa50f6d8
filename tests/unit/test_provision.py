"""Provisioning runs are validated before ansible-playbook starts; recaps are parsed."""

from pathlib import Path

import pytest

from roadie import inventory, provision
from roadie.errors import RoadieError
from roadie.paths import ROOT

RECAP = """
PLAY RECAP *********************************************************************
cache1                     : ok=12   changed=0    unreachable=0    failed=0    skipped=3    rescued=0    ignored=0
db1                        : ok=30   changed=2    unreachable=0    failed=0    skipped=5    rescued=0    ignored=0
"""


def test_recap_is_parsed_per_host():
    recap = provision.parse_recap("TASK [x]\nok: [db1]\n" + RECAP)
    assert recap["cache1"]["changed"] == 0
    assert recap["db1"] == {"ok": 30, "changed": 2, "unreachable": 0, "failed": 0, "skipped": 5,
                            "rescued": 0, "ignored": 0}
    run = provision.PlaybookRun("site", 0, 1.0, recap)
    assert run.changed_hosts() == {"db1": 2}


@pytest.mark.parametrize("name, expected", [
    ("nosuch", "no playbook 'nosuch'"),
    ("../etc/passwd", "playbook must be a name"),
    ("site; rm -rf /", "playbook must be a name"),
])
def test_bad_playbook_names(name, expected):
    with pytest.raises(RoadieError, match=expected):
        provision.playbook_path(name)


def test_command_validates_limit_and_tags(tmp_path):
    inv = inventory.load("lab")
    playbook = tmp_path / "x.yml"
    argv = provision.command(playbook, inv, check=True, limit="database", tags="redis,postgresql_users")
    assert argv[1:] == ["-i", str(inv.source), str(playbook), "--check", "--limit", "database",
                        "--tags", "redis,postgresql_users"]
    with pytest.raises(RoadieError, match="unknown host or group 'nosuch'"):
        provision.command(playbook, inv, limit="nosuch")
    with pytest.raises(RoadieError, match="bad tag"):
        provision.command(playbook, inv, tags="redis;reboot")


def test_production_needs_its_vault_before_anything_runs(monkeypatch):
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    with pytest.raises(RoadieError, match="vault.yml is missing: copy vault.yml.example"):
        provision.check_secrets(inventory.load("production"))


PLUGINS = "/venv/site-packages/ansible_mitogen/plugins/strategy"


def test_mitogen_is_chosen_when_it_loads_and_supports_ansible_core():
    chosen = provision.select_strategy("2.19.14", provision.MITOGEN_VERSION, PLUGINS)
    assert chosen == provision.Strategy("mitogen_linear", PLUGINS)
    assert chosen.env() == {"ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_STRATEGY_PLUGINS": PLUGINS}
    assert provision.select_strategy("2.10.0", provision.MITOGEN_VERSION, PLUGINS).name == "mitogen_linear"


@pytest.mark.parametrize("core, mitogen, plugins, load_error, reason", [
    ("2.20.0", provision.MITOGEN_VERSION, PLUGINS, None, "supports ansible-core 2.10-2.19, installed: 2.20.0"),
    ("2.9.27", provision.MITOGEN_VERSION, PLUGINS, None, "installed: 2.9.27"),
    ("3.0.0rc1", provision.MITOGEN_VERSION, PLUGINS, None, "installed: 3.0.0rc1"),
    (None, provision.MITOGEN_VERSION, PLUGINS, None, "installed: none"),
    ("2.19.14", None, None, None, "not installed"),
    ("2.19.14", "0.3.99", PLUGINS, None, "mitogen 0.3.99 installed, Roadie is tested with"),
    ("2.19.14", provision.MITOGEN_VERSION, None, "AnsibleError: Your version of Ansible is too old",
     "it does not load: AnsibleError: Your version"),
    ("2.19.14", provision.MITOGEN_VERSION, None, None, "it does not load: its strategy plugin is missing"),
])
def test_falls_back_to_builtin_linear_with_one_warning_line(core, mitogen, plugins, load_error, reason):
    chosen = provision.select_strategy(core, mitogen, plugins, load_error=load_error)
    assert chosen.name == "linear" and chosen.plugin_dir is None
    assert chosen.env() == {"ANSIBLE_STRATEGY": "linear"}
    assert chosen.warning.startswith("warning: Mitogen not used (")
    assert reason in chosen.warning
    assert chosen.warning.endswith("running with Ansible's built-in linear strategy")
    assert "\n" not in chosen.warning


@pytest.mark.parametrize("switch", ["0", "off", "false", " No "])
def test_switching_mitogen_off_chooses_builtin_linear_without_a_warning(switch):
    chosen = provision.select_strategy("2.19.14", provision.MITOGEN_VERSION, PLUGINS, switch=switch)
    assert chosen == provision.Strategy("linear")


@pytest.mark.parametrize("switch", [None, "", "1", "yes"])
def test_other_switch_values_leave_mitogen_on(switch):
    assert provision.select_strategy("2.19.14", provision.MITOGEN_VERSION, PLUGINS, switch=switch).name == \
        "mitogen_linear"


def test_every_run_gets_the_strategy_and_roadies_config(monkeypatch, capsys):
    monkeypatch.setenv(provision.MITOGEN_SWITCH, "0")
    env = provision.ansible_env({"EXTRA": "1"})
    assert env["ANSIBLE_STRATEGY"] == "linear" and "ANSIBLE_STRATEGY_PLUGINS" not in env
    assert env["ANSIBLE_CONFIG"].endswith("ansible.cfg") and env["EXTRA"] == "1"
    assert capsys.readouterr().err == ""


def test_installed_mitogen_is_the_pinned_one_and_is_chosen(monkeypatch):
    # The venv bootstrap installs from pyproject.toml: the pin and the tested version must agree.
    monkeypatch.delenv(provision.MITOGEN_SWITCH, raising=False)
    chosen = provision.strategy()
    assert chosen.name == "mitogen_linear", chosen.warning
    assert (Path(chosen.plugin_dir) / "mitogen_linear.py").is_file()
    pins = (ROOT / "pyproject.toml").read_text()
    assert f'"mitogen=={provision.MITOGEN_VERSION}"' in pins
