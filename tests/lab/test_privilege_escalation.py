"""Every escalation path of issue 13, written as the attack, on the real lab hosts.

Each test acts as the deploy user (Fabric's account) or as postgres (which the deploy user may act as on
database hosts, and which any database superuser reaches through COPY ... TO PROGRAM): it plants the link
or file, runs the allowed command (or the next provisioning run), then checks as root that

- no uid 0 process was obtained: every payload records `id -u` where it runs, and none recorded 0;
- no root-owned file changed owner, mode or content (a snapshot of what root runs, reads or serves);
- the command failed, with one clear line, where it had to.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

from roadie.core import ssh
from roadie.deploy import stream_host
from roadie.lab import provision
from tests.lab.fabrun import fab

MARK = "/dev/shm/roadie-attack-uid"   # a payload that runs writes its uid here (outside any PrivateTmp)

# What root runs, reads as configuration or serves, per host: must never change under an attack.
ROOT_PATHS = {
    "stream1": "/etc/passwd /etc/shadow /etc/sudoers /etc/sudoers.d /usr/local/sbin /usr/local/lib/roadie "
               "/etc/systemd/system /etc/systemd/system/stream.service /srv/stream /srv/stream/shared "
               "/srv/stream/shared/stream.env /etc/nginx/sites-available/stream.conf /etc/nftables.conf /etc/roadie",
    "lb1": "/etc/passwd /etc/shadow /etc/sudoers.d /usr/local/sbin /usr/local/lib/roadie /etc/haproxy "
           "/etc/haproxy/haproxy.cfg /etc/haproxy/roadie-helper.json /etc/ssh/ssh_host_ed25519_key /etc/roadie",
    "db1": "/etc/passwd /etc/shadow /etc/sudoers.d /usr/local/sbin /usr/local/sbin/pg-conf-check "
           "/usr/local/sbin/pg-base-backup /etc/postgresql/15/main /etc/postgresql/15/main/conf.d "
           "/etc/postgresql/15/main/conf.d/50-roadie.conf /etc/postgresql/15/main/pg_hba.conf /var/backups /etc/roadie",
}


def _run(conn: ssh.HostConnection, command: str):
    return conn.run(command, hide=True, warn=True, in_stream=False, timeout=120)


def _snapshot(conn: ssh.HostConnection, paths: str) -> str:
    """Owner, group, mode, type and content hash of each path and of the entries of each directory."""
    script = (f"for p in {paths}; do find \"$p\" -maxdepth 1 -printf '%p %U:%G %m %y %l\\n'; done | sort; "
              f"for p in {paths}; do find \"$p\" -maxdepth 1 -type f -exec sha256sum {{}} +; done | sort")
    result = _run(conn, f"sh -c {shlex.quote(script)}")
    assert result.exited == 0, result.stderr
    return result.stdout


@pytest.fixture
def untouched(conns, provisioned):
    """Snapshots root's files before the test and checks after it that none changed, and that no
    payload ever ran as root."""
    before = {host: _snapshot(conns(host), paths) for host, paths in ROOT_PATHS.items()}
    for host in ROOT_PATHS:
        _run(conns(host), f"rm -f {MARK}")
    yield
    for host, paths in ROOT_PATHS.items():
        assert _snapshot(conns(host), paths) == before[host], f"a root-owned file changed on {host}"
        uids = _run(conns(host), f"cat {MARK} 2>/dev/null || true").stdout.split()
        assert "0" not in uids, f"a payload ran as root on {host}: uids {uids}"


@pytest.fixture(scope="module")
def as_postgres(as_deploy):
    """A command as postgres on db1, the way the deploy user (or a database superuser) gets there."""
    def run(command: str):
        return _run(as_deploy("db1"), f"cd / && sudo -n -u postgres sh -c {shlex.quote(command)}")
    return run


def _payload(name: str) -> str:
    """A shell payload that records the uid it runs as."""
    return f"#!/bin/sh\nid -u >> {MARK}\n"


# ---------------------------------------------------------------- 1: the env-file rewriter on stream hosts
def test_swapping_shared_and_planting_the_rewriters_temp_link_gets_no_root(as_deploy, lab_inventory, stack,
                                                                           untouched):
    deploy = as_deploy("stream1")
    db1, db2 = (lab_inventory.host_var(h, "roadie_private_address") for h in ("db1", "db2"))
    attack = (
        "set -x; mkdir -p /tmp/fake-shared && cp /dev/null /tmp/fake-shared/stream.env; "
        f"echo 'STREAM_DATABASE_URL=postgresql://u:p@{db2}:5432,{db1}:5432/s' > /tmp/fake-shared/stream.env; "
        "ln -sfn /usr/local/sbin/stream-task /tmp/fake-shared/.stream.env.roadie-tmp; "
        "mv /srv/stream/shared /srv/stream/shared.old; mv /tmp/fake-shared /srv/stream/shared; "
        "ln -sfn /usr/local/sbin/stream-task /srv/stream/shared/.stream.env.roadie-tmp; "
        "ln -sfn /usr/local/sbin/stream-task /srv/stream/shared/stream.env")
    result = _run(deploy, f"sh -c {shlex.quote(attack)}")
    assert result.stderr.count("Permission denied") >= 3, result.stderr
    use = _run(deploy, f"sudo -n /usr/local/sbin/stream-task use-database {db2}")
    # The allowed command works on the real env file (or says why not), never on the planted one.
    assert use.exited == 0 or len(use.stderr.strip().splitlines()) == 1, use.stderr
    back = _run(deploy, f"sudo -n /usr/local/sbin/stream-task use-database {db1}")
    assert back.exited == 0, back.stderr
    _run(deploy, "rm -rf /tmp/fake-shared")


# ---------------------------------------------------------------- 2-4: the next provisioning run
def test_links_planted_for_the_next_provisioning_run_are_never_followed(as_deploy, as_postgres, conns, untouched):
    deploy_stream, deploy_lb = as_deploy("stream1"), as_deploy("lb1")
    # 2. The deploy user's own state directory: the common role used to chown it recursively.
    for conn in (deploy_stream, deploy_lb):
        assert _run(conn, "ln -sfn /etc/passwd /var/lib/roadie/passwd && "
                          "ln -sfn /etc /var/lib/roadie/etc-dir").exited == 0
    # 3. The streaming role's directories: /srv/stream is root's, so nothing in it can be swapped.
    for attack in ("mv /srv/stream/releases /srv/stream/releases.old",
                   "ln -sfn /etc /srv/stream/venvs.new && mv -T /srv/stream/venvs.new /srv/stream/venvs",
                   "ln -sfn /etc/shadow /srv/stream/shared/media/../stream.env"):
        assert _run(deploy_stream, f"sh -c {shlex.quote(attack)}").exited != 0, attack
    # What the deploy user still writes (releases, media) may hold links; the role must not walk them.
    assert _run(deploy_stream, "ln -sfn /etc/shadow /srv/stream/shared/media/shadow && "
                               "ln -sfn /usr/local/sbin /srv/stream/releases/sbin").exited == 0
    # 4. As postgres: swap the backup root (its parent is root's) and, inside postgres' own tree, the
    #    base directory, for links to /usr/local/sbin; rewrite the checker root runs as `validate:`.
    assert as_postgres("mv /var/backups/postgresql /var/backups/pg.old").exited != 0
    assert as_postgres("ln -sfn /usr/local/sbin /etc/postgresql/15/main/conf.d/50-roadie.conf.new && "
                       "mv -T /etc/postgresql/15/main/conf.d/50-roadie.conf.new "
                       "/etc/postgresql/15/main/conf.d/50-roadie.conf").exited != 0
    assert as_postgres("echo 'id -u >> /tmp/x' >> /usr/local/sbin/pg-conf-check").exited != 0
    assert as_postgres("mv /var/backups/postgresql/wal /var/backups/postgresql/wal.real && "
                       "ln -sfn /usr/local/sbin /var/backups/postgresql/wal").exited == 0
    try:
        run = provision.run("site", "lab", limit="stream1,lb1,db1", echo=False)
        # Root does not follow postgres' link: the run stops on db1 with the role's own line, nowhere else.
        assert not run.recap["stream1"].get("failed") and not run.recap["lb1"].get("failed"), run.output[-3000:]
        assert run.recap["db1"].get("failed"), "a link in the WAL archive's place went unnoticed"
        assert "/var/backups/postgresql/wal" in run.output
    finally:
        assert as_postgres("rm /var/backups/postgresql/wal && "
                           "mv /var/backups/postgresql/wal.real /var/backups/postgresql/wal").exited == 0
        for conn in (deploy_stream, deploy_lb):
            _run(conn, "rm -f /var/lib/roadie/passwd /var/lib/roadie/etc-dir")
        _run(deploy_stream, "rm -f /srv/stream/shared/media/shadow /srv/stream/releases/sbin")
    for host, path in (("stream1", "/etc/passwd"), ("lb1", "/etc/passwd"), ("stream1", "/etc"),
                       ("stream1", "/etc/shadow"), ("db1", "/usr/local/sbin")):
        assert _run(conns(host), f"stat -c %U {path}").stdout.strip() == "root", (host, path)


def test_a_fence_marker_planted_as_a_link_is_not_read_through(as_deploy, conns):
    # The deploy user's directory holds the failover's fence marker; root's role only reads a plain file.
    deploy = as_deploy("db2")
    shadow = _run(conns("db2"), "cut -d: -f2 /etc/shadow | grep -v '^[*!]' | head -1").stdout.strip()
    assert _run(deploy, "ln -sfn /etc/shadow /var/lib/roadie/postgresql-fenced.json").exited == 0
    try:
        run = provision.run("database", "lab", limit="db2", echo=False)
        assert run.recap["db2"].get("failed"), "a link in the fence's place went unnoticed"
        assert "the marker is not a plain file" in run.output
        assert not shadow or shadow not in run.output
    finally:
        _run(deploy, "rm -f /var/lib/roadie/postgresql-fenced.json")


# ---------------------------------------------------------------- 5: the maintenance page
def test_a_link_at_the_maintenance_page_never_serves_a_root_file(as_deploy, conns, stack, untouched):
    deploy = as_deploy("lb1")
    key = _run(conns("lb1"), "cat /etc/ssh/ssh_host_ed25519_key").stdout
    for attack in ("ln -sfn /etc/ssh/ssh_host_ed25519_key /etc/haproxy/maintenance/page.html",
                   "ln -sfn /etc/shadow /etc/haproxy/maintenance/x && mv -T /etc/haproxy/maintenance/x "
                   "/etc/haproxy/maintenance/page.html",
                   "mv /etc/haproxy/maintenance /etc/haproxy/m.old"):
        assert _run(deploy, f"sh -c {shlex.quote(attack)}").exited != 0, attack
    on = fab("maintenance.on", "--message", "attack", "--yes", timeout=300)
    try:
        assert on.returncode == 0, on.stdout + on.stderr
        body = subprocess.run(["curl", "-s", f"http://{stack['lb']}/tracks"], capture_output=True, text=True,
                              timeout=30).stdout
        assert "attack" in body and "PRIVATE KEY" not in body and key.strip()[40:80] not in body
    finally:
        off = fab("maintenance.off", "--yes", timeout=300)
        assert off.returncode == 0, off.stdout + off.stderr


# ---------------------------------------------------------------- 6: the runtime API
def test_the_deploy_user_cannot_repoint_a_backend_or_take_the_sockets(as_deploy, conns, stack, untouched):
    deploy = as_deploy("lb1")
    direct = _run(deploy, "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); "
                          "s.connect('/run/haproxy/admin.sock')\"")
    assert direct.exited != 0 and "Permission denied" in direct.stderr
    before = _run(conns("lb1"), "echo 'show servers state stream' | socat stdio /run/haproxy/admin.sock").stdout
    for request in (["set", "server", "stream/stream1", "addr", "10.87.0.99"],
                    ["raw", "set server stream/stream1 addr 10.87.0.99"],
                    ["state", "stream", "stream1;set server stream/stream1 addr 10.87.0.99", "drain"],
                    ["state", "stream", "stream1\nset server stream/stream1 addr 10.87.0.99", "drain"],
                    ["state", "stats", "stream1", "drain"],
                    ["state", "stream", "stream1", "maint", "extra"],
                    ["weight", "stream", "stream1", "100000"],
                    ["shutdown", "sessions", "server", "stream/stream1"],
                    ["stat; show fd"]):
        refused = _run(deploy, f"sudo -n /usr/local/sbin/roadie-haproxy {shlex.join(request)}")
        assert refused.exited != 0, request
        assert len(refused.stderr.strip().splitlines()) == 1 and "roadie-haproxy:" in refused.stderr, refused.stderr
    after = _run(conns("lb1"), "echo 'show servers state stream' | socat stdio /run/haproxy/admin.sock").stdout

    def addresses(text: str) -> list[tuple[str, str]]:
        return [(f[3], f[4]) for f in (line.split() for line in text.splitlines()) if len(f) > 5 and f[1] == "stream"]

    assert addresses(before) and addresses(after) == addresses(before)
    assert all(addr != "10.87.0.99" for _, addr in addresses(after))


# ---------------------------------------------------------------- more attempts from a reviewer's list
def test_a_release_whose_code_is_the_attackers_runs_as_the_service_not_root(as_deploy, conns, untouched):
    # The deploy user writes release payloads: a "release" of its own, run through the allowed wrapper.
    deploy = as_deploy("stream1")
    evil = "/srv/stream/releases/evil-1"
    setup = (f"rm -rf {evil} && mkdir -p {evil}/venv/bin {evil}/app && "
             f"printf '%s' {shlex.quote(_payload('python'))} > {evil}/venv/bin/python && "
             f"chmod 4755 {evil}/venv/bin/python && touch {evil}/.roadie-complete && "
             f"touch {MARK} && chmod 666 {MARK}")
    assert _run(deploy, f"sh -c {shlex.quote(setup)}").exited == 0
    try:
        for task in ("migrate evil-1", "seed evil-1 --no-db"):
            _run(deploy, f"sudo -n /usr/local/sbin/stream-task {task}")
        uids = _run(conns("stream1"), f"cat {MARK}").stdout.split()
        assert uids and "0" not in uids, uids    # it ran, as stream or deploy, never root
    finally:
        _run(deploy, f"rm -rf {evil}")


@pytest.mark.parametrize("attack", [
    # A release directory that is a link to a root directory.
    "ln -sfn /root /srv/stream/releases/rootlink && sudo -n /usr/local/sbin/stream-task switch rootlink",
    "sudo -n /usr/local/sbin/stream-task switch ../../etc",
    "sudo -n /usr/local/sbin/stream-task switch 'x\n'",
    # Environment handed through sudo: no SETENV, so sudo refuses before anything runs.
    "sudo -n PYTHONPATH=/tmp PYTHONSTARTUP=/tmp/x.py /usr/local/sbin/stream-task use-database 10.87.0.20",
    "sudo -n -E /usr/local/sbin/stream-task use-database 10.87.0.20",
    "sudo -n SYSTEMD_PAGER=/bin/sh /usr/bin/systemctl --no-pager status stream.service",
    "sudo -n LD_PRELOAD=/tmp/x.so /usr/bin/systemctl restart stream.service",
    # Unit drop-ins and units: root's directories.
    "mkdir -p /etc/systemd/system/stream.service.d && echo '[Service]' > /etc/systemd/system/stream.service.d/x.conf",
    "echo x >> /etc/systemd/system/stream.service",
    # Another tier's commands are not on a stream host's list.
    "sudo -n /usr/bin/systemctl restart postgresql@15-main.service",
    "sudo -n /usr/local/sbin/roadie-haproxy stat",
    # The link `current` and its temporary name live in root's directory.
    "ln -sfn /etc /srv/stream/.current.tmp",
    "ln -sfn /etc /srv/stream/current",
    # Acting as another service account than postgres (and never postgres outside database hosts).
    "sudo -n -u postgres id",
    "sudo -n -u stream id",
])
def test_other_routes_to_root_on_a_stream_host_are_refused(as_deploy, stack, untouched, attack):
    result = _run(as_deploy("stream1"), f"sh -c {shlex.quote(attack)}")
    _run(as_deploy("stream1"), "rm -f /srv/stream/releases/rootlink")
    assert result.exited != 0, f"{attack}: {result.stdout}"
    assert "uid=0" not in result.stdout
    assert stream_host.releases(as_deploy("stream1")).current not in ("rootlink", "etc", None)


@pytest.mark.parametrize("attack", [
    "sudo -n true",                                                       # postgres has no sudo at all
    "echo x > /usr/local/sbin/stream-task",
    "ln -sfn /usr/local/sbin /var/backups/postgresql.new && mv -T /var/backups/postgresql.new /var/backups/postgresql",
    "ln -sfn /etc/shadow /etc/postgresql/15/main/pg_hba.conf.new && "
    "mv -T /etc/postgresql/15/main/pg_hba.conf.new /etc/postgresql/15/main/pg_hba.conf",
    "psql -XAtq -d postgres -c \"COPY (SELECT 'x') TO PROGRAM 'cp /bin/sh /usr/local/sbin/rootsh'\"",
])
def test_acting_as_postgres_never_reaches_root(as_postgres, untouched, attack):
    result = as_postgres(attack)
    assert result.exited != 0, f"{attack}: {result.stdout}"


def test_sudo_rights_follow_the_tier(as_deploy):
    rights = {host: _run(as_deploy(host), "sudo -n -l").stdout for host in ("stream1", "lb1", "db1", "cache1")}
    assert "stream-task" in rights["stream1"] and "stream-task" not in rights["lb1"] + rights["db1"] + rights["cache1"]
    assert "roadie-haproxy" in rights["lb1"] and "roadie-haproxy" not in rights["stream1"] + rights["db1"]
    assert "postgresql@15-main" in rights["db1"] and "postgresql@15-main" not in rights["stream1"] + rights["lb1"]
    assert "redis-server" in rights["cache1"] and "redis-server" not in rights["stream1"] + rights["db1"]
    assert "(postgres)" in rights["db1"] and "(postgres)" not in rights["stream1"] + rights["lb1"] + rights["cache1"]
