"""The shell helpers roles install from files/ and the settings files their templates render.

Each settings file is rendered here from its role's defaults and vars, as the template module does, and
read by the shell the way the helper reads it: the values must be the ones the role decides, whatever
characters they hold. The helpers then run from files/ with only their settings path (and, for
stream-task, the rewriter's) pointed into a temporary directory:
- postgresql: as root runs them, against a throw-away PostgreSQL 15 cluster on a unix socket (the Debian
  package postgresql-15, as tests/service needs): a base backup, its reference, retention, a restore
  check to the restore point, the settings checker;
- haproxy: the server-state saver, with a stand-in socat;
- streaming: stream-task's refusals, `switch`, and what `use-database` hands the env-file rewriter.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jinja2
import pytest
import yaml

from roadie import remote
from roadie.core.paths import ROOT

ROLES = ROOT / "roles"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
HOSTILE = ["tracks", "public.plays", "it's a \"t\"", "$(id)", "a b", "x;y"]


def _env(undefined: type[jinja2.Undefined]) -> jinja2.Environment:
    env = jinja2.Environment(  # noqa: S701 - shell settings, not HTML
        undefined=undefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters["quote"] = lambda value: shlex.quote(str(value))
    env.filters["normpath"] = os.path.normpath
    env.filters["comment"] = lambda text: "#\n# " + text + "\n#"
    env.filters["regex_replace"] = lambda value, pattern, replacement: re.sub(pattern, replacement, value)
    return env


def role_vars(role: str, **overrides: object) -> dict:
    """The role's defaults and vars, `overrides` applied, each templated value resolved from the others.

    A value that needs what only a play has (facts, groups, the vault) stays as it is: no settings file
    uses one."""
    found: dict = {}
    for part in ("defaults", "vars"):
        path = ROLES / role / part / "main.yml"
        if path.exists():
            found.update(yaml.safe_load(path.read_text()))
    found.update(overrides)
    lenient = _env(jinja2.Undefined)
    for _ in range(10):
        changed = False
        for name, value in list(found.items()):
            if isinstance(value, str) and "{{" in value:
                try:
                    resolved = lenient.from_string(value).render(found)
                except (jinja2.TemplateError, TypeError, ValueError):
                    continue
                changed |= resolved != value
                found[name] = resolved
        if not changed:
            return found
    raise AssertionError(f"the variables of {role} do not resolve")


def render(role: str, template: str, variables: dict) -> str:
    path = ROLES / role / "templates" / template
    return _env(jinja2.StrictUndefined).from_string(path.read_text()).render(
        {"ansible_managed": "Ansible managed", **variables})


def read_settings(text: str, tmp_path: Path, *names: str) -> dict[str, str | list[str]]:
    """What bash sees after `. settings`: each name's value, an array (a name ending in _TABLES) as a list."""
    path = tmp_path / "settings.conf"
    path.write_text(text)
    script = f"set -eu\n. {shlex.quote(str(path))}\n" + "".join(
        f'printf "%s\\0" "{name}" "${{#{name}[@]}}" "${{{name}[@]}}"\n' if name.endswith("_TABLES")
        else f'printf "%s\\0" "{name}" 1 "${{{name}}}"\n' for name in names)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, timeout=30).stdout
    fields, found = out.split("\0")[:-1], {}
    while fields:
        name, count = fields[0], int(fields[1])
        values, fields = fields[2:2 + count], fields[2 + count:]
        found[name] = values if name.endswith("_TABLES") else values[0]
    return found


# ---------------------------------------------------------------- postgresql: what the settings say
def test_the_backup_settings_are_the_roles_values_whatever_the_table_names(tmp_path):
    variables = role_vars("postgresql", postgresql_app_database="stream", postgresql_backup_key_tables=HOSTILE,
                          postgresql_restore_check_dir="/var/lib/postgresql//restore-check/")
    found = read_settings(render("postgresql", "etc/roadie/pg-backup.conf.j2", variables), tmp_path,
                          "PG_BIN", "PG_PORT", "BACKUP_BASE_DIR", "WAL_ARCHIVE_DIR", "BACKUP_KEEP",
                          "BACKUP_CHECKPOINT", "BACKUP_KEY_DATABASE", "BACKUP_KEY_TABLES", "TABLE_CHECKSUM_SQL",
                          "RESTORE_CHECK_DIR", "RESTORE_CHECK_PORT")
    defaults = yaml.safe_load((ROLES / "postgresql" / "defaults" / "main.yml").read_text())
    internal = yaml.safe_load((ROLES / "postgresql" / "vars" / "main.yml").read_text())
    assert found == {
        "PG_BIN": "/usr/lib/postgresql/15/bin", "PG_PORT": str(internal["__postgresql_port"]),
        "BACKUP_BASE_DIR": defaults["postgresql_backup_dir"] + "/base",
        "WAL_ARCHIVE_DIR": defaults["postgresql_backup_dir"] + "/wal",
        "BACKUP_KEEP": str(defaults["postgresql_backup_keep"]),
        "BACKUP_CHECKPOINT": defaults["postgresql_backup_checkpoint"], "BACKUP_KEY_DATABASE": "stream",
        "BACKUP_KEY_TABLES": HOSTILE, "TABLE_CHECKSUM_SQL": internal["__postgresql_table_checksum_sql"],
        "RESTORE_CHECK_DIR": "/var/lib/postgresql/restore-check",
        "RESTORE_CHECK_PORT": str(defaults["postgresql_restore_check_port"]),
    }
    assert read_settings(render("postgresql", "etc/roadie/pg-backup.conf.j2",
                                {**variables, "postgresql_backup_key_tables": []}),
                         tmp_path, "BACKUP_KEY_TABLES") == {"BACKUP_KEY_TABLES": []}


def test_the_settings_checker_reads_the_roles_bin_dir(tmp_path):
    found = read_settings(render("postgresql", "etc/roadie/pg-conf-check.conf.j2", role_vars("postgresql")),
                          tmp_path, "PG_BIN")
    assert found == {"PG_BIN": str(PG_BIN)}


# ---------------------------------------------------------------- postgresql: the helpers, for real
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A throw-away cluster run by postgres (socket only), archiving WAL, and the role's helpers beside it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = _free_port()
        self.sock = base / "sock"
        self.backups = base / "backups"
        self.bin = base / "sbin"
        self.etc = base / "etc"

    def path(self, *parts: str) -> Path:
        return self.base.joinpath(*parts)

    def as_postgres(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], cwd="/", capture_output=True, text=True,
                              check=True, timeout=120)

    def sql(self, query: str, database: str = "stream") -> str:
        return self.as_postgres(str(PG_BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock),
                                "-p", str(self.port), "-d", database, "-c", query).stdout.strip()

    def helper(self, name: str, *args: str) -> subprocess.CompletedProcess:
        """Run a helper as root runs it (it switches to postgres itself where it should)."""
        env = dict(os.environ, PGHOST=str(self.sock))   # the cluster's socket, not Debian's default
        return subprocess.run([str(self.bin / name), *args], cwd="/", capture_output=True, text=True, env=env,
                              check=False, timeout=300)

    def install(self, settings: dict[str, str]) -> None:
        """The helpers from files/, reading their settings here instead of /etc/roadie; root's, 0755/0644."""
        for directory in (self.bin, self.etc):
            directory.mkdir(mode=0o755)
        for name in ("pg-base-backup", "pg-restore-check", "pg-conf-check"):
            text = (ROLES / "postgresql" / "files" / name).read_text()
            for settings_name in settings:
                text = text.replace(f"/etc/roadie/{settings_name}", str(self.etc / settings_name))
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        for settings_name, text in settings.items():
            (self.etc / settings_name).write_text(text)
            (self.etc / settings_name).chmod(0o644)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0 or not (PG_BIN / "postgres").exists() or not shutil.which("runuser"):
        pytest.fail("needs root, runuser and PostgreSQL 15 (Debian package postgresql-15), as tests/service does")
    base = Path(tempfile.mkdtemp(prefix="roadie-pg-helpers-"))
    pg = Cluster(base)
    try:
        os.chmod(base, 0o755)  # noqa: S103 - postgres must reach its directories and the helpers
        shutil.chown(base, "postgres", "postgres")
        for directory in (pg.sock, pg.backups, pg.backups / "base", pg.backups / "wal"):
            directory.mkdir(mode=0o700)
            shutil.chown(directory, "postgres", "postgres")
        pg.as_postgres(str(PG_BIN / "initdb"), "-D", str(pg.path("data")), "-U", "postgres", "--auth=trust",
                       "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-p {pg.port} -k {pg.sock} -c listen_addresses='' -c fsync=off -c wal_level=replica "
                   f"-c archive_mode=on -c archive_command='cp %p {pg.backups}/wal/%f' -c max_wal_senders=4")
        pg.as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(pg.path("data")), "-l", str(pg.path("postgres.log")),
                       "-w", "-t", "60", "-o", options, "start")
        try:
            pg.sql("CREATE DATABASE stream", "postgres")
            pg.sql("CREATE TABLE tracks (id int PRIMARY KEY, title text); "
                   "INSERT INTO tracks SELECT i, 'track ' || i FROM generate_series(1, 100) i; "
                   "CREATE TABLE plays (track int, at timestamptz); "
                   "INSERT INTO plays SELECT i % 7, now() FROM generate_series(1, 40) i")
            variables = role_vars("postgresql", postgresql_app_database="stream",
                                  postgresql_backup_dir=str(pg.backups), __postgresql_port=pg.port,
                                  postgresql_backup_keep=2, postgresql_backup_key_tables=["tracks", "public.plays"],
                                  postgresql_restore_check_dir=str(pg.path("restore-check")),
                                  postgresql_restore_check_port=_free_port())
            pg.install({"pg-backup.conf": render("postgresql", "etc/roadie/pg-backup.conf.j2", variables),
                        "pg-conf-check.conf": render("postgresql", "etc/roadie/pg-conf-check.conf.j2", variables)})
            yield pg
        finally:
            pg.as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(pg.path("data")), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _backups(pg: Cluster) -> list[dict]:
    done = subprocess.run(["sh", "-c", remote.command("list_backups.py", pg.backups / "base")], capture_output=True,
                          text=True, check=True, timeout=60)
    return json.loads(done.stdout)


def test_a_base_backup_records_its_reference_and_restores_to_it(cluster):
    done = cluster.helper("pg-base-backup")
    assert done.returncode == 0, done.stderr
    [backup] = _backups(cluster)
    assert backup["has_reference"] and re.fullmatch(r"[0-9A-F]{24}", backup["start_wal"])
    assert set(backup["sha256"]) == {"base.tar.gz", "pg_wal.tar.gz", "backup_manifest"}
    folder = cluster.backups / "base" / backup["name"]
    assert os.stat(folder).st_uid == os.stat(cluster.base).st_uid   # written by postgres, not root
    reference = json.loads((folder / "roadie-reference.json").read_text())
    assert reference["database"] == "stream" and reference["restore_point"] == f"roadie-{backup['name']}"
    assert {name: table["rows"] for name, table in reference["tables"].items()} == {"tracks": 100,
                                                                                   "public.plays": 40}
    cluster.sql("INSERT INTO tracks SELECT i, 'later' FROM generate_series(101, 150) i")
    checked = cluster.helper("pg-restore-check", "-b", backup["name"], "-r", "-j")
    assert checked.returncode == 0, checked.stderr
    restored = json.loads(checked.stdout)
    assert restored["tables"] == reference["tables"] and restored["restore_point"] == reference["restore_point"]
    assert not cluster.path("restore-check").exists()
    immediate = cluster.helper("pg-restore-check", "-i", "-d", "stream", "SELECT count(*) FROM tracks")
    assert (immediate.returncode, immediate.stdout.strip()) == (0, "100"), immediate.stderr


def test_backups_beyond_the_kept_number_are_removed(cluster):
    for _ in range(3):
        time.sleep(1.1)   # backups are named by the second
        done = cluster.helper("pg-base-backup")
        assert done.returncode == 0, done.stderr
    kept = _backups(cluster)
    assert len(kept) == 2
    oldest_wal = kept[0]["start_wal"]
    archived = [name for name in os.listdir(cluster.backups / "wal") if re.fullmatch(r"[0-9A-F]{24}", name)]
    assert archived and min(archived) >= oldest_wal


def test_the_settings_checker_accepts_a_valid_fragment_and_names_a_bad_one(cluster, tmp_path):
    good, bad = tmp_path / "good.conf", tmp_path / "bad.conf"
    good.write_text("shared_buffers = 64MB\nwork_mem = 8MB\n")
    bad.write_text("shared_buffers = banana\n")
    assert cluster.helper("pg-conf-check", str(good)).returncode == 0
    refused = cluster.helper("pg-conf-check", str(bad))
    assert refused.returncode == 1 and "shared_buffers" in refused.stderr
    assert cluster.helper("pg-conf-check").returncode == 2


# ---------------------------------------------------------------- haproxy: the server-state saver
def _saver(tmp_path: Path, answer: str | None) -> tuple[Path, dict]:
    """The saver from files/ reading its settings from tmp_path; `socat` a stand-in that prints `answer`
    (and records what it was asked), the runtime API socket a real one (nothing answers on it)."""
    variables = role_vars("haproxy", haproxy_runtime_api_socket=str(tmp_path / "admin.sock"),
                          haproxy_server_state_file=str(tmp_path / "state" / "server-state"))
    settings = tmp_path / "haproxy-state.conf"
    settings.write_text(render("haproxy", "etc/roadie/haproxy-state.conf.j2", variables))
    saver = tmp_path / "haproxy-save-server-state"
    saver.write_text((ROLES / "haproxy" / "files" / "haproxy-save-server-state").read_text()
                     .replace("/etc/roadie/haproxy-state.conf", str(settings)))
    saver.chmod(0o755)
    (tmp_path / "state").mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if answer is not None:
        (tmp_path / "answer").write_text(answer)
        (bin_dir / "socat").write_text(f'#!/bin/sh\ncat > {tmp_path}/asked\necho "$@" >> {tmp_path}/asked\n'
                                       f"cat {tmp_path}/answer\n")
        (bin_dir / "socat").chmod(0o755)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(tmp_path / "admin.sock"))
        listener.close()
    return saver, dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def test_the_server_state_is_saved_from_the_socket_the_settings_name(tmp_path):
    dump = "1\n# be_id be_name srv_id srv_name ...\n3 stream 1 stream1 10.87.0.11 2 0 1 1 0 1 0 0\n"
    saver, env = _saver(tmp_path, dump)
    done = subprocess.run([str(saver)], capture_output=True, text=True, env=env, check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    state = tmp_path / "state" / "server-state"
    assert state.read_text() == dump and oct(state.stat().st_mode & 0o777) == "0o640"
    assert (tmp_path / "asked").read_text() == f"show servers state\n-t 5 stdio unix-connect:{tmp_path}/admin.sock\n"
    assert os.listdir(tmp_path / "state") == ["server-state"]


def test_an_error_answer_or_no_socket_leaves_the_state_file_as_it_is(tmp_path):
    saver, env = _saver(tmp_path, "Unknown command\n")
    state = tmp_path / "state" / "server-state"
    state.write_text("1\nearlier\n")
    done = subprocess.run([str(saver)], capture_output=True, text=True, env=env, check=False, timeout=30)
    assert done.returncode == 1 and "unexpected answer" in done.stderr
    assert state.read_text() == "1\nearlier\n" and os.listdir(tmp_path / "state") == ["server-state"]
    (tmp_path / "admin.sock").unlink()
    done = subprocess.run([str(saver)], capture_output=True, text=True, env=env, check=False, timeout=30)
    assert done.returncode == 0 and "is absent" in done.stderr and state.read_text() == "1\nearlier\n"


# ---------------------------------------------------------------- streaming: the release task wrapper
def test_the_wrapper_settings_are_the_roles_values(tmp_path):
    variables = role_vars("streaming", streaming_database_host="10.0.0.20",
                          streaming_database_replica_hosts=["10.0.0.21", "10.0.0.20", ""])
    found = read_settings(render("streaming", "etc/roadie/stream-task.conf.j2", variables), tmp_path,
                          "STREAM_USER", "STREAM_DEPLOY_USER", "STREAM_ROOT", "STREAM_RELEASES", "STREAM_MEDIA",
                          "STREAM_ENV_FILE", "STREAM_DATABASE_HOSTS")
    assert found == {"STREAM_USER": "stream", "STREAM_DEPLOY_USER": "deploy", "STREAM_ROOT": "/srv/stream",
                     "STREAM_RELEASES": "/srv/stream/releases", "STREAM_MEDIA": "/srv/stream/shared/media",
                     "STREAM_ENV_FILE": "/srv/stream/shared/stream.env",
                     "STREAM_DATABASE_HOSTS": "10.0.0.20,10.0.0.21"}


@dataclass
class Wrapper:
    """stream-task under test: its layout, how to run it, what the rewriter stand-in was handed."""

    root: Path
    run: Callable[..., subprocess.CompletedProcess]
    argv_file: Path
    settings: Path

    def stage(self, release: str) -> None:
        (self.root / "releases" / release).mkdir()
        (self.root / "releases" / release / ".roadie-complete").touch()


@pytest.fixture
def wrapper(tmp_path):
    """stream-task from files/ with its layout under tmp_path; the env-file rewriter it hands
    use-database and forget-database to is a stand-in that records its arguments."""
    root = tmp_path / "srv-stream"
    (root / "releases").mkdir(parents=True)
    variables = role_vars("streaming", streaming_database_host="10.0.0.20",
                          streaming_database_replica_hosts=["10.0.0.21"], __streaming_root=str(root),
                          __streaming_releases=str(root / "releases"),
                          __streaming_media=str(root / "shared" / "media"),
                          __streaming_env_file=str(root / "shared" / "stream.env"))
    settings = tmp_path / "stream-task.conf"
    settings.write_text(render("streaming", "etc/roadie/stream-task.conf.j2", variables))
    recorder = tmp_path / "stream_env.py"
    recorder.write_text(f"import json, sys\nopen({str(tmp_path / 'rewriter-argv')!r}, 'w').write("
                        "json.dumps(sys.argv[1:]))\n")
    script = tmp_path / "stream-task"
    script.write_text((ROLES / "streaming" / "files" / "stream-task").read_text()
                      .replace("/etc/roadie/stream-task.conf", str(settings))
                      .replace("/usr/local/lib/roadie/stream_env.py", str(recorder)))
    script.chmod(0o755)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(script), *args], capture_output=True, text=True, check=False, timeout=30)

    return Wrapper(root, run, tmp_path / "rewriter-argv", settings)


def test_use_database_hands_the_env_file_and_the_inventorys_hosts_to_the_rewriter(wrapper):
    assert wrapper.run("use-database", "10.0.0.21").returncode == 0
    assert json.loads(wrapper.argv_file.read_text()) == [
        "use-database", str(wrapper.root / "shared" / "stream.env"), "10.0.0.21", "10.0.0.20,10.0.0.21"]
    assert wrapper.run("forget-database", "10.0.0.20").returncode == 0
    assert json.loads(wrapper.argv_file.read_text()) == [
        "forget-database", str(wrapper.root / "shared" / "stream.env"), "10.0.0.20"]


def test_switch_points_current_at_a_staged_release_and_keeps_the_previous_one(wrapper):
    wrapper.stage("r1")
    wrapper.stage("r2")
    first = wrapper.run("switch", "r1")
    assert (first.returncode, first.stdout) == (0, "\n"), first.stderr
    second = wrapper.run("switch", "r2")
    assert (second.returncode, second.stdout) == (0, "r1\n"), second.stderr
    assert os.readlink(wrapper.root / "current") == "releases/r2"
    assert os.readlink(wrapper.root / "previous") == "releases/r1"


@pytest.mark.parametrize("args", [
    ("use-database", "10.0.0.20;id"), ("use-database", "-x"), ("switch", "../../etc"), ("switch", "unstaged"),
    ("switch", "rootlink"), ("seed", "r1", "--evil"), ("migrate", "r1", "--x"), ("shell", "r1"), ("switch",),
])
def test_the_wrapper_refuses_what_it_does_not_know(wrapper, args):
    wrapper.stage("r1")
    (wrapper.root / "releases" / "rootlink").symlink_to("/root")
    done = wrapper.run(*args)
    assert done.returncode == 2 and done.stderr.startswith("stream-task: "), (args, done.stderr)
    assert not (wrapper.root / "current").exists() and not wrapper.argv_file.exists()


def test_the_wrapper_stops_without_its_settings(wrapper):
    wrapper.stage("r1")
    wrapper.settings.unlink()
    done = wrapper.run("switch", "r1")
    assert (done.returncode, done.stderr.strip()) == (2, f"stream-task: cannot read {wrapper.settings}")
    assert not (wrapper.root / "current").exists()
