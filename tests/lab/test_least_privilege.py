"""Least privilege, checked on the real hosts.

- Fabric's operations log in as the deploy user, never root, and the deploy user's sudo is the role's exact
  list: no root shell, no arbitrary command, no secret file it can read.
- The stream service writes nowhere but shared/logs (tried from inside its own mount namespace as its
  own user), and `systemd-analyze security` rates the unit; the score is printed and bounded.
- sshd, as `sshd -T` reports its effective configuration, refuses passwords and allows root nothing
  but the lab's bootstrap key (production and staging inventories say "no").
Checks of what the deploy user may do run over the deploy user's own connection; inspection of the
results runs as root (the auditor's view).
"""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from roadie.core import inventory, ssh
from roadie.core.paths import ROOT
from roadie.deploy import stream_host

STREAM = ("stream1", "stream2", "stream3")
# Each host's tier: its sudo list must be exactly that tier's in the common role's defaults.
TIER = {"stream1": "stream", "lb1": "balancer", "db1": "database", "cache1": "cache"}
SUDO_BY_TIER = yaml.safe_load((ROOT / "roles/common/defaults/main.yml").read_text())[
    "common_deploy_sudo_commands_by_group"]


def _run(conn, command: str):
    return conn.run(command, hide=True, warn=True, in_stream=False, timeout=60)


def test_every_fabric_connection_is_the_deploy_user(lab_inventory):
    assert {h.user for h in lab_inventory.hosts.values()} == {"deploy"}
    results = ssh.run_parallel(lab_inventory.hosts.values(), "id -un; id -Gn")
    for name, r in results.items():
        user, groups = r.stdout.split("\n", 1)
        assert r.ok and user == "deploy", (name, r)
        assert "sudo" not in groups.split() and "root" not in groups.split() and "docker" not in groups.split()


def test_sudo_is_the_exact_list_and_nothing_more(as_deploy):
    for host in ("stream1", "lb1", "db1", "cache1"):
        listing = _run(as_deploy(host), "sudo -n -l").stdout
        rules = " ".join(listing.split(" may run the following commands on ", 1)[-1].split())
        # "(runas) NOPASSWD: cmd, cmd, ..." entries: root only ever gets exact commands; the one account
        # that gets everything is postgres, and only on database hosts.
        entries = re.findall(r"\(([^)]*)\) NOPASSWD: (.*?)(?= \(|$)", rules)
        assert entries, listing
        for runas, commands in entries:
            assert "ALL" not in runas.split(":")[0].split(","), (host, runas)
            if runas.strip() == "root":
                assert commands.strip() != "ALL" and not re.search(r"(^|, )ALL(,|$)", commands), (host, commands)
            else:
                assert runas.strip() == "postgres" and host.startswith("db"), (host, runas)
        root_commands = [c.strip() for r, cs in entries if r.strip() == "root" for c in cs.split(",")]
        assert sorted(root_commands) == sorted(SUDO_BY_TIER[TIER[host]]), (host, listing)


@pytest.mark.parametrize("command", [
    "sudo -n true",
    "sudo -n /bin/sh -c id",
    "sudo -n -s",
    "sudo -n -i",
    "sudo -n cat /etc/shadow",
    "sudo -n systemctl restart ssh.service",
    "sudo -n systemctl --no-pager status stream.service -o verbose --pager",
    "sudo -n systemd-run --pipe id",
    "sudo -n /usr/local/sbin/stream-task migrate ../../../etc",
    "sudo -n /usr/local/sbin/stream-task migrate '$(id)'",
    "sudo -n /usr/local/sbin/stream-task shell x",
    "sudo -n /usr/local/sbin/stream-task seed nosuchrelease",
    "sudo -n -u stream id",
])
def test_no_root_shell_and_no_arbitrary_command(as_deploy, command):
    result = _run(as_deploy("stream1"), command)
    assert result.exited != 0, f"{command} was allowed: {result.stdout}"
    assert "uid=0" not in result.stdout


def test_stream_task_accepts_only_a_staged_release(as_deploy, conns, stack):
    # The release stream1 runs now: earlier tests may have deployed others and pruned the stack's.
    release = stream_host.releases(as_deploy("stream1")).current
    assert release, "stream1 runs no release"
    bad = _run(as_deploy("stream1"), f"sudo -n /usr/local/sbin/stream-task seed {release} --evil")
    assert bad.exited == 2 and "seed takes only --no-db" in bad.stderr
    ok = _run(as_deploy("stream1"), f"sudo -n /usr/local/sbin/stream-task migrate {release}")
    assert ok.exited == 0, ok.stderr
    # A failover may reorder the service's own database hosts, never point it at another server.
    elsewhere = _run(as_deploy("stream1"), "sudo -n /usr/local/sbin/stream-task use-database 10.87.0.99")
    assert elsewhere.exited != 0 and "is not one of the database hosts" in elsewhere.stderr
    assert _run(as_deploy("stream1"), "sudo -n /usr/local/sbin/stream-task use-database '10.87.0.20;id'").exited == 2


@pytest.mark.parametrize("path", ["/srv/stream/shared/stream.env", "/etc/shadow", "/etc/sudoers",
                                  "/etc/redis/users.acl"])
def test_secrets_are_not_readable_by_deploy(as_deploy, path):
    host = "cache1" if path.startswith("/etc/redis") else "stream1"
    result = _run(as_deploy(host), f"cat {path}")
    assert result.exited != 0 and "Permission denied" in result.stderr, path


def test_deploy_cannot_change_what_root_owns(as_deploy):
    for path in ("/usr/local/sbin/stream-task", "/etc/systemd/system/stream.service", "/etc/sudoers.d/x",
                 "/srv/stream/shared/stream.env"):
        result = _run(as_deploy("stream1"), f"touch {path}")
        assert result.exited != 0, path


# The unit's sandbox, read from the installed unit file (the keys that confine the process).
_SANDBOX = re.compile(r"^(User|Group|UMask|NoNewPrivileges|Protect\w+|Private\w+|ReadWritePaths|Restrict\w+|"
                      r"LockPersonality|MemoryDenyWriteExecute|RemoveIPC|CapabilityBoundingSet|AmbientCapabilities|"
                      r"SystemCall\w+|ProcSubset)=(.*)$")


@pytest.mark.parametrize("path, writable", [
    ("/srv/stream/shared/logs/.probe", True),
    ("/srv/stream/current/.probe", False),
    ("/srv/stream/shared/media/.probe", False),
    ("/srv/stream/shared/.probe", False),
    ("/etc/.probe", False),
    ("/var/tmp/.probe", True),        # PrivateTmp: the unit's own, thrown away at stop
    ("/home/deploy/.probe", False),
    ("/root/.probe", False),
])
def test_stream_service_writes_only_its_logs(conns, stack, path, writable):
    conn = conns("stream1")
    unit = _run(conn, "cat /etc/systemd/system/stream.service").stdout
    props = [m.group(0) for line in unit.splitlines() if (m := _SANDBOX.match(line.strip()))]
    assert any(p.startswith("ProtectSystem=strict") for p in props) and any(p.startswith("User=") for p in props)
    # The same sandbox around a probe (a lab container may not enter the live service's namespaces).
    args = " ".join(f"-p {shlex.quote(p)}" for p in props)
    result = _run(conn, f"systemd-run --quiet --wait --pipe --collect {args} /bin/sh -c "
                        + shlex.quote(f"echo x > {path} && rm -f {path}"))
    assert (result.exited == 0) == writable, (path, result.stderr)


def test_systemd_analyze_security_score(conns):
    out = _run(conns("stream1"), "systemd-analyze security --no-pager stream.service").stdout
    match = re.search(r"Overall exposure level for stream\.service: ([0-9.]+) (\w+)", out)
    assert match, out[-500:]
    score = float(match.group(1))
    print(f"\nsystemd-analyze security stream.service: {score} {match.group(2)}")
    assert score <= 2.5, out    # 0 = fully locked down, 10 = unprotected; "OK" is below 5


def test_sshd_refuses_passwords_and_root(conns, lab_inventory):
    for host in ("stream1", "db1", "lb1"):
        settings = dict(line.split(" ", 1) for line in _run(conns(host), "sshd -T").stdout.splitlines()
                        if " " in line)
        assert settings["passwordauthentication"] == "no"
        assert settings["kbdinteractiveauthentication"] == "no"
        assert settings["permitemptypasswords"] == "no"
        assert settings["pubkeyauthentication"] == "yes"
        # The lab provisions as root with its key; root may never log in with a password.
        assert settings["permitrootlogin"] in ("no", "without-password")
    for name in ("staging", "production"):
        inv = inventory.load(name)
        host = next(iter(inv.hosts))
        assert inv.host_var(host, "common_ssh_permit_root_login") == "no"
        assert inv.hosts[host].user == "deploy"
