"""Name checks match the whole value: a trailing newline (which `re.match(r"...$")` lets through) is refused."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from roadie import remote
from roadie.core import inventory
from roadie.core.errors import RoadieError
from roadie.db import backups as db_backups
from roadie.db import restore_check as db_restore
from roadie.db import wal
from roadie.deploy import balancer, release
from roadie.status import ops


@pytest.mark.parametrize("release_id", ["r1\n", "20260102030405-abcdef0\n", "20260102030405-abcdef0-dirty\n"])
def test_a_release_id_with_a_trailing_newline_is_refused(release_id):
    assert release.check_release_id(release_id.rstrip("\n")) == release_id.rstrip("\n")
    with pytest.raises(RoadieError, match="bad release id"):
        release.check_release_id(release_id)


class Socket:
    """A balancer connection that records what would reach HAProxy's helper and answers nothing."""

    def __init__(self):
        self.sent = []

    def run(self, command, **kwargs):
        self.sent.append(command)
        return SimpleNamespace(exited=0, stdout="", stderr="")


def test_a_haproxy_backend_name_with_a_trailing_newline_is_refused():
    conn = Socket()
    with pytest.raises(RoadieError, match="bad backend name"):
        balancer.Balancer(conn, "stream\n")
    assert conn.sent == []


@pytest.mark.parametrize("name", ["stream1\n", "stream1\nshow info"])
def test_a_haproxy_server_name_with_a_newline_is_refused(name):
    assert balancer._check_name("server", "stream1") == "stream1"
    with pytest.raises(RoadieError, match="bad server name"):
        balancer._check_name("server", name)


@pytest.mark.parametrize("unit, since", [("stream.service\n", None), ("stream.service", "today\n")])
def test_journal_arguments_with_a_trailing_newline_are_refused(unit, since):
    ops.journal_command("stream.service", lines=10, since="today", grep=None, follow=False)
    with pytest.raises(RoadieError, match="bad"):
        ops.journal_command(unit, lines=10, since=since, grep=None, follow=False)


def test_a_backup_name_with_a_trailing_newline_is_refused():
    with pytest.raises(RoadieError, match="--backup must be a backup name"):
        db_restore.restore_target(inventory.load("lab"), "20260102T023000Z\n")


def test_a_wal_segment_with_a_trailing_newline_is_refused():
    with pytest.raises(RoadieError, match="bad first WAL segment"):
        wal.wal_needed("000000010000000000000003\n", "0/3000148", [])


def test_the_backup_listing_on_a_host_skips_a_directory_whose_name_ends_in_a_newline(tmp_path):
    meta = {"started_at": "2026-01-02T02:30:00Z", "finished_at": "2026-01-02T02:31:00Z",
            "start_wal": "000000010000000000000003", "size_bytes": 1}
    for name in ("20260102T023000Z", "20260103T023000Z\n"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "roadie-backup.json").write_text(json.dumps(meta))
    program = remote.source(db_backups.LIST_BACKUPS_PROGRAM)
    out = subprocess.run([sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    assert [b["name"] for b in json.loads(out)] == ["20260102T023000Z"]
