"""Provisioning runs are validated before ansible-playbook starts; recaps are parsed."""

import json
from pathlib import Path

import pytest

from roadie.core import inventory
from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT
from roadie.lab import provision, strategy

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


def test_restart_primary_passes_both_data_tier_flags_as_booleans(tmp_path):
    inv = inventory.load("lab")
    argv = provision.command(tmp_path / "x.yml", inv, restart_primary=True)
    assert argv[-2] == "-e"
    assert json.loads(argv[-1]) == {"postgresql_restart_primary": True, "redis_restart_primary": True}
    assert "-e" not in provision.command(tmp_path / "x.yml", inv)


def test_production_needs_its_vault_before_anything_runs(monkeypatch):
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    with pytest.raises(RoadieError, match="vault.yml is missing: copy vault.yml.example"):
        provision.check_secrets(inventory.load("production"))


PLUGINS = "/venv/site-packages/ansible_mitogen/plugins/strategy"


def test_mitogen_is_chosen_when_it_loads_and_supports_ansible_core():
    chosen = strategy.select_strategy("2.19.14", strategy.MITOGEN_VERSION, PLUGINS)
    assert chosen == strategy.Strategy("mitogen_linear", PLUGINS)
    assert chosen.env() == {"ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_STRATEGY_PLUGINS": PLUGINS}
    assert strategy.select_strategy("2.10.0", strategy.MITOGEN_VERSION, PLUGINS).name == "mitogen_linear"


@pytest.mark.parametrize("core, mitogen, plugins, load_error, reason", [
    ("2.20.0", strategy.MITOGEN_VERSION, PLUGINS, None, "supports ansible-core 2.10-2.19, installed: 2.20.0"),
    ("2.9.27", strategy.MITOGEN_VERSION, PLUGINS, None, "installed: 2.9.27"),
    ("3.0.0rc1", strategy.MITOGEN_VERSION, PLUGINS, None, "installed: 3.0.0rc1"),
    (None, strategy.MITOGEN_VERSION, PLUGINS, None, "installed: none"),
    ("2.19.14", None, None, None, "not installed"),
    ("2.19.14", "0.3.99", PLUGINS, None, "mitogen 0.3.99 installed, Roadie is tested with"),
    ("2.19.14", strategy.MITOGEN_VERSION, None, "AnsibleError: Your version of Ansible is too old",
     "it does not load: AnsibleError: Your version"),
    ("2.19.14", strategy.MITOGEN_VERSION, None, None, "it does not load: its strategy plugin is missing"),
])
def test_falls_back_to_builtin_linear_with_one_warning_line(core, mitogen, plugins, load_error, reason):
    chosen = strategy.select_strategy(core, mitogen, plugins, load_error=load_error)
    assert chosen.name == "linear" and chosen.plugin_dir is None
    assert chosen.env() == {"ANSIBLE_STRATEGY": "linear"}
    assert chosen.warning.startswith("warning: Mitogen not used (")
    assert reason in chosen.warning
    assert chosen.warning.endswith("running with Ansible's built-in linear strategy")
    assert "\n" not in chosen.warning


@pytest.mark.parametrize("switch", ["0", "off", "false", " No "])
def test_switching_mitogen_off_chooses_builtin_linear_without_a_warning(switch):
    chosen = strategy.select_strategy("2.19.14", strategy.MITOGEN_VERSION, PLUGINS, switch=switch)
    assert chosen == strategy.Strategy("linear")


@pytest.mark.parametrize("switch", [None, "", "1", "yes"])
def test_other_switch_values_leave_mitogen_on(switch):
    assert strategy.select_strategy("2.19.14", strategy.MITOGEN_VERSION, PLUGINS, switch=switch).name == \
        "mitogen_linear"


def test_every_run_gets_the_strategy_and_roadies_config(monkeypatch, capsys):
    monkeypatch.setenv(strategy.MITOGEN_SWITCH, "0")
    env = strategy.ansible_env({"EXTRA": "1"})
    assert env["ANSIBLE_STRATEGY"] == "linear" and "ANSIBLE_STRATEGY_PLUGINS" not in env
    assert env["ANSIBLE_CONFIG"].endswith("ansible.cfg") and env["EXTRA"] == "1"
    assert capsys.readouterr().err == ""


def test_installed_mitogen_is_the_pinned_one_and_is_chosen(monkeypatch):
    # The venv bootstrap installs from pyproject.toml: the pin and the tested version must agree.
    monkeypatch.delenv(strategy.MITOGEN_SWITCH, raising=False)
    chosen = strategy.strategy()
    assert chosen.name == "mitogen_linear", chosen.warning
    assert (Path(chosen.plugin_dir) / "mitogen_linear.py").is_file()
    pins = (ROOT / "pyproject.toml").read_text()
    assert f'"mitogen=={strategy.MITOGEN_VERSION}"' in pins


# ---- sshd's allowed sources: named networks, never any address, checked before ansible-playbook starts

def _ssh_inventory(tmp_path: Path, sources: str | None) -> Path:
    """Two hosts; `sources` is the YAML of common_ssh_allowed_sources in group_vars/all (None: not set)."""
    (tmp_path / "hosts.yml").write_text("all:\n  hosts:\n    db1:\n      ansible_host: 10.9.0.20\n"
                                        "    db2:\n      ansible_host: 10.9.0.21\n")
    vars_dir = tmp_path / "group_vars" / "all"
    vars_dir.mkdir(parents=True)
    text = "roadie_known_hosts_file: '{{ inventory_dir }}/known_hosts'\n"
    if sources is not None:
        text += f"common_ssh_allowed_sources: {sources}\n"
    (vars_dir / "vars.yml").write_text(text)
    return tmp_path


@pytest.mark.parametrize("name", ["lab", "staging", "production"])
def test_the_shipped_inventories_name_the_networks_sshd_is_open_to(name):
    inv = inventory.load(name)
    provision.check_ssh_sources(inv)
    for host in inv.hosts:
        sources = inv.host_var(host, provision.SSH_SOURCES_VAR)
        assert sources and all(not entry.endswith("/0") for entry in sources), (host, sources)


@pytest.mark.parametrize("sources, expected", [
    (None, "common_ssh_allowed_sources is not set (the common role's default is empty) for db1 and 1 more hosts"),
    ("[]", "common_ssh_allowed_sources is empty for db1"),
    ("[0.0.0.0/0]", "allows any address (0.0.0.0/0) for db1"),
    ("[10.40.254.0/28, '::/0']", "allows any address (::/0)"),
    ("[10.40.254.0/28, 10.0.0.0/0]", "allows any address (10.0.0.0/0)"),
    ("10.40.254.0/28", "must be a list of CIDRs, got '10.40.254.0/28'"),
    ("[bastion.example.internal]", "has 'bastion.example.internal', which is not a CIDR"),
])
def test_sshd_open_to_any_address_or_to_nothing_is_refused_in_one_line(tmp_path, sources, expected):
    inv = inventory.load(_ssh_inventory(tmp_path, sources))
    with pytest.raises(RoadieError) as err:
        provision.check_ssh_sources(inv)
    message = str(err.value)
    assert message.startswith(f"inventory {inv.name}: ") and expected in message, message
    assert "bastion or VPN range" in message and "\n" not in message


def test_a_run_with_sshd_open_to_everyone_stops_before_ansible_playbook(tmp_path, monkeypatch):
    def no_ansible(*args, **kwargs):
        raise AssertionError(f"ansible-playbook started: {args}")

    monkeypatch.setattr(provision.subprocess, "Popen", no_ansible)
    source = _ssh_inventory(tmp_path, "[10.40.254.0/28, 0.0.0.0/0]")
    # Refused for sshd, before the vault this inventory lacks is even looked at.
    with pytest.raises(RoadieError, match=r"allows any address \(0\.0\.0\.0/0\)"):
        provision.run("site", str(source), check=True, echo=False)


def test_a_tag_with_a_trailing_newline_is_refused(tmp_path):
    with pytest.raises(RoadieError, match="bad tag"):
        provision.command(tmp_path / "x.yml", inventory.load("lab"), tags="redis\n")


@pytest.mark.parametrize("kwargs, expected", [
    ({"name": "nosuch"}, "no playbook 'nosuch'"),
    ({"limit": "nosuchgroup"}, "unknown host or group 'nosuchgroup'"),
    ({"tags": "a;b"}, "bad tag 'a;b'"),
])
def test_bad_provisioning_input_is_refused_before_the_lock_host_is_reached(monkeypatch, kwargs, expected):
    from roadie.core import ssh

    def never(host):
        raise AssertionError(f"{host.name} was contacted")

    monkeypatch.setattr(ssh, "connect", never)
    monkeypatch.setattr(provision, "check_secrets", lambda inv: None)
    with pytest.raises(RoadieError, match=expected):
        provision.run_in_change(kwargs.pop("name", "site"), "lab", **kwargs)
