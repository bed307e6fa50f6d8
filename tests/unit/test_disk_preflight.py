"""Free-space preflight before staging (issue 14): the bytes a release needs on a host, the host program that
measures what it has, and Rollout.stage refusing before any upload when one host is short.

Hosts are stand-ins: the free-space program runs here on tmp dirs (python3 is this interpreter), and the
rollout talks to canned connections that answer it with chosen figures and record every command and put.
"""

from __future__ import annotations

import errno
import io
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import pytest

from roadie import remote
from roadie.core.cli import human_bytes
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.core.inventory import Host
from roadie.deploy import host_space, release, stream_host
from roadie.deploy.executor import Rollout
from roadie.deploy.types import Options, Reporter
from roadie.remote import answer, free_space, stage_release
from tests.unit import forge

MiB = 1024 * 1024
PROGRAM = Path(free_space.__file__)
FREE_SPACE_SOURCE = shlex.quote(remote.source(host_space.FREE_SPACE_PROGRAM))
STAGE_SOURCE = shlex.quote(remote.source(stream_host.STAGE_PROGRAM))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return forge.build(tmp_path_factory.mktemp("build"), "r1")


def _wheel_bytes(artifact: Path) -> int:
    _, entries = forge.read(artifact)
    return sum(len(data) for info, data in entries
               if info.isreg() and info.name.startswith("wheels/") and info.name.endswith(".whl"))


# ------------------------------------------------------------------ the needed-bytes arithmetic


def test_release_bytes_are_upload_plus_payload_plus_every_listed_member(built):
    manifest, size = built.manifest, built.artifact.stat().st_size
    files = [m for m in manifest.members if m.type == "file"]
    dirs = [m for m in manifest.members if m.type == "dir"]
    assert files and dirs
    # Block 1: no rounding, so every byte is accounted for once.
    assert host_space.release_bytes(manifest, size, 1) == (
        size + manifest.payload_size + sum(m.size for m in files) + len(dirs) + len(manifest.to_json()))
    # Block 4096: every file and directory takes whole blocks.
    assert host_space.unpacked_bytes(manifest, 4096) == 4096 * (len(files) + len(dirs) + 1)


def test_unpacked_estimate_covers_what_the_unpacked_payload_really_takes_on_disk(built, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    with tarfile.open(built.artifact, "r:gz") as outer:
        payload = io.BytesIO(outer.extractfile("payload.tar.gz").read())
    with tarfile.open(fileobj=payload, mode="r:gz") as inner:
        inner.extractall(tree, filter="data")
    (tree / "manifest.json").write_bytes(built.manifest.to_json())
    taken = sum(os.lstat(Path(top, name)).st_blocks * 512
                for top, dirs, files in os.walk(tree) for name in dirs + files)
    block = os.statvfs(tmp_path).f_frsize
    assert 0 < taken <= host_space.unpacked_bytes(built.manifest, block)


def test_a_bigger_payload_needs_more_room_by_at_least_what_it_adds(built, tmp_path):
    blob = os.urandom(MiB)   # incompressible: in the payload, in the artifact and unpacked
    forged = tmp_path / "r1.tar.gz"
    forge.forge(built.artifact, forged, lambda entries: [*entries, forge.entry("app/blob.bin", blob)], relist=True)
    bigger = release.verify(forged)
    before = host_space.release_bytes(built.manifest, built.artifact.stat().st_size, 4096)
    after = host_space.release_bytes(bigger, forged.stat().st_size, 4096)
    assert after - before >= 3 * MiB


def test_venv_estimate_is_a_base_plus_a_factor_of_the_wheels(built):
    wheels = _wheel_bytes(built.artifact)
    assert wheels > 0
    assert host_space.venv_bytes(built.manifest) == host_space.VENV_BASE_BYTES + host_space.VENV_FACTOR * wheels


def test_margin_is_the_larger_of_the_fixed_and_the_fraction():
    assert host_space.with_margin(0) == 0
    assert host_space.with_margin(MiB) == MiB + host_space.SPACE_MARGIN_BYTES
    big = 10 * 1024 * MiB
    assert host_space.with_margin(big) == big + int(big * host_space.SPACE_MARGIN_FRACTION)


def _measured(free: int, *, venvs_free: int | None = None, staged: bool = False, ready: bool = False,
              apart: bool = False, venv: str = "shared", upload: int | None = None) -> dict:
    releases = {"path": str(stream_host.RELEASES), "free": free, "block": 4096, "device": 1}
    venvs = {"path": str(stream_host.VENVS), "free": free if venvs_free is None else venvs_free, "block": 4096,
             "device": 2 if apart else 1}
    return {"releases": releases, "venvs": venvs, "staged": staged, "venv": venv, "venv_ready": ready,
            "upload": upload}


def test_rooms_follow_where_the_venv_goes(built):
    manifest, size = built.manifest, built.artifact.stat().st_size
    here = host_space.release_bytes(manifest, size, 4096)
    venv = host_space.venv_bytes(manifest)
    rooms = lambda **kw: [(r.path, r.needed) for r in host_space.room_for("s", _measured(10**12, **kw),  # noqa: E731
                                                                            manifest, size).rooms]
    releases, venvs = str(stream_host.RELEASES), str(stream_host.VENVS)
    # Shared venv not built yet, same filesystem: one room holds both.
    assert rooms() == [(releases, host_space.with_margin(here + venv))]
    # The shared venv for this dependency set is complete: no venv to build.
    assert rooms(ready=True) == [(releases, host_space.with_margin(here))]
    # Venvs on another filesystem: the venv is needed there.
    assert rooms(apart=True) == [(releases, host_space.with_margin(here)), (venvs, host_space.with_margin(venv))]
    assert rooms(apart=True, ready=True) == [(releases, host_space.with_margin(here))]
    # No shared venvs directory the deploy user can write: the release builds its own venv in place.
    assert rooms(apart=True, venv="own") == [(releases, host_space.with_margin(here + venv))]
    # Staged already: nothing to upload or build.
    found = host_space.room_for("s", _measured(0, staged=True), manifest, size)
    assert found.rooms == () and found.enough


# ------------------------------------------------------------------ the host program, run here


def _run_program(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROGRAM), *args], capture_output=True, text=True, check=False)


def test_program_prints_the_free_bytes_statvfs_reports(tmp_path):
    releases, venvs = tmp_path / "releases", tmp_path / "venvs"
    releases.mkdir()
    before = os.statvfs(releases)
    done = _run_program("--releases", str(releases), "--venvs", str(venvs), "--release", "r1")
    after = os.statvfs(releases)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    fs = answer["releases"]
    assert fs["path"] == str(releases) and fs["block"] == before.f_frsize
    assert fs["device"] == os.stat(releases).st_dev
    # Others may write to this filesystem meanwhile: the answer lies between the two readings, give or take.
    low, high = sorted(s.f_bavail * s.f_frsize for s in (before, after))
    assert low - 8 * MiB <= fs["free"] <= high + 8 * MiB
    assert answer["venvs"] is None and answer["venv"] == "own"   # no venvs directory
    assert answer["staged"] is False and answer["venv_ready"] is False and answer["upload"] is None


def test_program_sees_a_staged_release_a_complete_shared_venv_and_an_upload(tmp_path):
    releases, venvs = tmp_path / "releases", tmp_path / "venvs"
    key = "0123456789abcdef01234567"
    (releases / "r1").mkdir(parents=True)
    (releases / "r1" / stream_host.COMPLETE_MARK).touch()
    env = venvs / f"{key}-py{platform.python_version()}"
    env.mkdir(parents=True)
    (env / stream_host.COMPLETE_MARK).touch()
    (releases / ".r2.tar.gz").write_bytes(b"x" * 12345)
    common = ["--releases", str(releases), "--venvs", str(venvs), "--key", key]
    one = json.loads(_run_program(*common, "--release", "r1").stdout)
    assert one["staged"] is True and one["venv"] == "shared" and one["venv_ready"] is True
    assert one["venvs"]["path"] == str(venvs)
    two = json.loads(_run_program(*common, "--release", "r2", "--upload", str(releases / ".r2.tar.gz")).stdout)
    assert two["staged"] is False and two["upload"] == 12345
    other = json.loads(_run_program(*common[:-1], "fedcba9876543210fedcba98", "--release", "r2").stdout)
    assert other["venv_ready"] is False
    assert "present" not in one   # listed only when asked


def test_program_lists_the_releases_when_given_the_base(tmp_path):
    base = tmp_path / "srv"
    releases = base / "releases"
    for name, mtime in (("r2", 200), ("r1", 100), ("half", 300)):
        (releases / name).mkdir(parents=True)
        if name != "half":   # no completion mark: an interrupted staging, not a release
            mark = releases / name / stream_host.COMPLETE_MARK
            mark.touch()
            os.utime(mark, (mtime, mtime))
    (base / "current").symlink_to("releases/r2")
    (base / "previous").symlink_to("releases/r1")
    done = _run_program("--releases", str(releases), "--venvs", str(base / "venvs"), "--release", "r3",
                        "--base", str(base))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["present"] == {"current": "r2", "previous": "r1", "kept": ["r1", "r2"]}


@pytest.mark.parametrize("args", [["--release", "../x"], ["--release", "r1", "--key", "not-hex"],
                                  ["--release", "r1", "--upload", "relative"]])
def test_program_refuses_a_bad_request_with_one_line(tmp_path, args):
    done = _run_program("--releases", str(tmp_path), "--venvs", str(tmp_path / "v"), *args)
    assert done.returncode == answer.FAILED
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1 and done.stderr.startswith("refused: ")


class LocalConn:
    """Runs the command here with `python3` being this interpreter, as stream_host would on a host."""

    host = "local"

    def __init__(self, bin_dir: Path) -> None:
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def run(self, command: str, **kwargs):
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=self.env, check=False)
        return SimpleNamespace(exited=done.returncode, stdout=done.stdout, stderr=done.stderr)


def test_space_sends_the_program_and_reads_its_answer(built, tmp_path, monkeypatch):
    releases, venvs, bin_dir = tmp_path / "releases", tmp_path / "venvs", tmp_path / "bin"
    for d in (releases, venvs, bin_dir):
        d.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    monkeypatch.setattr(stream_host, "RELEASES", PurePosixPath(releases))
    monkeypatch.setattr(stream_host, "VENVS", PurePosixPath(venvs))
    size = built.artifact.stat().st_size
    found = host_space.space(LocalConn(bin_dir), built.manifest, size, built.deps)
    assert found.host == "local" and not found.staged
    [room] = found.rooms   # same filesystem: one room, the venv counted in it
    assert room.path == str(releases)
    assert room.needed == host_space.with_margin(
        host_space.release_bytes(built.manifest, size, os.statvfs(releases).f_frsize)
        + host_space.venv_bytes(built.manifest))
    free = os.statvfs(releases).f_bavail * os.statvfs(releases).f_frsize
    assert abs(room.free - free) <= 8 * MiB


# ------------------------------------------------------------------ Rollout.stage against canned hosts


@dataclass
class Canned:
    """A stream host's connection: answers the free-space program from `measured` (then from `after_put`
    once a put was tried), the releases listing from `listing`, the staging program with `stage`;
    records every command and put, and fails puts with `put_error`."""

    inventory_host: Host
    measured: dict
    after_put: dict | None = None
    put_error: OSError | None = None
    stage: tuple[int, str] = (0, "staged r1")
    listing: dict = field(default_factory=lambda: {"current": "r0", "previous": None, "kept": ["r0"]})
    commands: list[str] = field(default_factory=list)
    puts: list[tuple[str, str]] = field(default_factory=list)

    def run(self, command: str, **kwargs):
        self.commands.append(command)
        if FREE_SPACE_SOURCE in command:
            answer = dict(self.after_put if self.puts and self.after_put is not None else self.measured)
            if "--base" in command:   # the deploy's measure lists the releases in the same round trip
                answer["present"] = self.listing
            return SimpleNamespace(exited=0, stdout=json.dumps(answer) + "\n", stderr="")
        if STAGE_SOURCE in command:
            code, text = self.stage
            return SimpleNamespace(exited=code, stdout=text if code == 0 else "", stderr="" if code == 0 else text)
        if command.startswith("rm -f"):
            return SimpleNamespace(exited=0, stdout="", stderr="")
        return SimpleNamespace(exited=0, stdout=json.dumps(self.listing) + "\n", stderr="")

    def put(self, local: str, remote_path: str) -> None:
        self.puts.append((local, remote_path))
        if self.put_error is not None:
            raise self.put_error

    def others(self) -> list[str]:
        """Every command but the free-space program's."""
        return [c for c in self.commands if FREE_SPACE_SOURCE not in c]


def _host(name: str) -> Host:
    return Host(name, "192.0.2.1", 22, "deploy", Path("/nonexistent/known_hosts"))


def _rollout(conns: dict[str, Canned]) -> tuple[Rollout, io.StringIO]:
    out = io.StringIO()
    fleet = Fleet(stream=[c.inventory_host for c in conns.values()], balancer=_host("lb1"))
    work = Rollout(fleet, Options(), Reporter(stream=out))
    work.conns = dict(conns)
    return work, out


def _needed(built) -> int:
    size = built.artifact.stat().st_size
    return host_space.room_for("x", _measured(0), built.manifest, size).rooms[0].needed


PLENTY = 50 * 1024 * MiB


def test_one_short_host_of_three_refuses_the_release_before_any_upload(built):
    needed = _needed(built)
    free = 12 * MiB
    assert free < needed
    conns = {name: Canned(_host(name), _measured(PLENTY)) for name in ("stream1", "stream2")}
    conns["stream3"] = Canned(_host("stream3"), _measured(free))
    work, _ = _rollout(conns)
    with pytest.raises(RoadieError) as caught:
        work.stage(built.artifact, built.manifest)
    message = str(caught.value)
    assert message == (f"not enough space for release r1 on stream3:/srv/stream/releases: "
                       f"{human_bytes(free)} ({free} bytes) free, {human_bytes(needed)} ({needed} bytes) needed; "
                       "nothing uploaded")
    assert "stream1" not in message and "stream2" not in message
    for conn in conns.values():
        assert conn.puts == [] and conn.others() == []   # measured, then nothing: no listing, upload or staging
        assert len(conn.commands) == 1


def test_every_short_host_and_filesystem_is_named(built):
    conns = {"stream1": Canned(_host("stream1"), _measured(PLENTY)),
             "stream2": Canned(_host("stream2"), _measured(PLENTY, venvs_free=MiB, apart=True)),
             "stream3": Canned(_host("stream3"), _measured(3 * MiB))}
    work, _ = _rollout(conns)
    with pytest.raises(RoadieError) as caught:
        work.stage(built.artifact, built.manifest)
    message = str(caught.value)
    assert re.fullmatch(r"not enough space for release r1 on stream2:/srv/stream/venvs: 1\.0 MiB \(1048576 bytes\) "
                        r"free, [^;]+ needed; stream3:/srv/stream/releases: 3\.0 MiB \(3145728 bytes\) free, [^;]+ "
                        r"needed; nothing uploaded", message), message
    assert all(c.puts == [] for c in conns.values())


def test_a_host_that_cannot_be_measured_stops_the_release_before_any_upload(built):
    conns = {name: Canned(_host(name), _measured(PLENTY)) for name in ("stream1", "stream2")}
    broken = Canned(_host("stream2"), _measured(PLENTY))
    broken.run = lambda command, **kw: SimpleNamespace(exited=3, stdout="", stderr="refused: /x is not a directory")
    conns["stream2"] = broken
    work, _ = _rollout(conns)
    with pytest.raises(RoadieError, match=r"^free-space check failed, nothing uploaded: stream2: measuring free "
                                          r"space failed: refused: /x is not a directory$"):
        work.stage(built.artifact, built.manifest)
    assert all(c.puts == [] for c in conns.values())


def test_enough_room_everywhere_stages_every_host(built):
    conns = {name: Canned(_host(name), _measured(PLENTY)) for name in ("stream1", "stream2", "stream3")}
    work, out = _rollout(conns)
    work.stage(built.artifact, built.manifest)
    for conn in conns.values():
        assert conn.puts == [(str(built.artifact), "/srv/stream/releases/.r1.tar.gz")]
        assert any(STAGE_SOURCE in c for c in conn.commands)
    assert out.getvalue().count("staged r1") == 3


def test_staging_a_host_takes_three_round_trips_measure_upload_unpack(built):
    conns = {name: Canned(_host(name), _measured(PLENTY)) for name in ("stream1", "stream2")}
    work, _ = _rollout(conns)
    work.stage(built.artifact, built.manifest)
    for conn in conns.values():
        assert len(conn.commands) == 2 and len(conn.puts) == 1   # free space + listing, then put, then unpack
        assert FREE_SPACE_SOURCE in conn.commands[0] and STAGE_SOURCE in conn.commands[1]
    assert work.running == {"stream1": "r0", "stream2": "r0"}   # what each host ran, from the same answer


def test_then_runs_on_each_host_once_it_is_staged_and_its_error_comes_after_every_host(built):
    conns = {name: Canned(_host(name), _measured(PLENTY)) for name in ("stream1", "stream2", "stream3")}
    work, _ = _rollout(conns)
    seen: list[tuple[str, int]] = []

    def then(host: str) -> None:
        seen.append((host, len(conns[host].puts)))
        if host == "stream1":
            raise RoadieError("stream1: migrations failed: boom")

    with pytest.raises(RoadieError, match=r"^stream1: migrations failed: boom$"):
        work.stage(built.artifact, built.manifest, then=then)
    assert sorted(seen) == [("stream1", 1), ("stream2", 1), ("stream3", 1)]   # each after its own upload
    assert all(STAGE_SOURCE in c.commands[-1] for c in conns.values())   # the others still staged


def test_a_host_with_the_release_staged_needs_no_room(built):
    conns = {name: Canned(_host(name), _measured(PLENTY)) for name in ("stream1", "stream2")}
    conns["stream3"] = Canned(_host("stream3"), _measured(0, staged=True),
                              listing={"current": "r0", "previous": None, "kept": ["r0", "r1"]})
    work, out = _rollout(conns)
    work.stage(built.artifact, built.manifest)
    assert conns["stream3"].puts == [] and "stream3: release r1 already staged" in out.getvalue()


# ------------------------------------------------------------------ out of space all the same


def test_an_upload_that_fills_the_disk_is_one_line_and_its_partial_file_is_removed(built):
    size = built.artifact.stat().st_size
    full = Canned(_host("stream2"), _measured(PLENTY), after_put=_measured(0, upload=size // 2),
                  put_error=OSError("Failure"))
    conns = {"stream1": Canned(_host("stream1"), _measured(PLENTY)), "stream2": full}
    work, _ = _rollout(conns)
    with pytest.raises(RoadieError) as caught:
        work.stage(built.artifact, built.manifest)
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(r"staging failed, nothing switched: stream2: no space left on device uploading r1 to "
                        r"stream2:/srv/stream/releases \(OSError: Failure\): 0 B \(0 bytes\) free, [^;]+ needed; "
                        r"the partial upload was removed", message), message
    assert "rm -f -- /srv/stream/releases/.r1.tar.gz" in full.commands
    assert not any(STAGE_SOURCE in c for c in full.commands)


def test_an_upload_failing_for_another_reason_says_so_and_removes_the_partial_file(built):
    failing = Canned(_host("stream1"), _measured(PLENTY), put_error=PermissionError(errno.EACCES, "Permission denied"))
    work, _ = _rollout({"stream1": failing})
    with pytest.raises(RoadieError) as caught:
        work.stage(built.artifact, built.manifest)
    assert str(caught.value) == ("staging failed, nothing switched: stream1: uploading r1 to "
                                 "stream1:/srv/stream/releases/.r1.tar.gz failed (PermissionError: [Errno 13] "
                                 "Permission denied); the partial upload was removed")
    assert "rm -f -- /srv/stream/releases/.r1.tar.gz" in failing.commands


def test_staging_that_runs_out_of_space_names_the_host_and_the_filesystem(built):
    error = ("failed: OSError: [Errno 28] No space left on device: "
             "'/srv/stream/venvs/0123456789abcdef01234567-py3.11/lib/python3.11/site-packages/x.so'")
    full = Canned(_host("stream3"), _measured(PLENTY, venvs_free=PLENTY, apart=True),
                  after_put=_measured(PLENTY, venvs_free=5 * MiB, apart=True), stage=(3, error))
    work, _ = _rollout({"stream3": full})
    with pytest.raises(RoadieError) as caught:
        work.stage(built.artifact, built.manifest)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("staging failed, nothing switched: stream3: no space left on device staging r1 in "
                              "stream3:/srv/stream/venvs: 5.0 MiB (5242880 bytes) free now, "), message
    assert "needed; the partial release was removed (staging r1 failed: failed: OSError: [Errno 28]" in message
    assert "rm -f -- /srv/stream/releases/.r1.tar.gz" in full.commands


def test_staging_failing_for_another_reason_is_reported_as_it_was(built):
    failing = Canned(_host("stream1"), _measured(PLENTY), stage=(3, "refused: requirements.txt line 1 is odd"))
    work, _ = _rollout({"stream1": failing})
    with pytest.raises(RoadieError, match=r"^staging failed, nothing switched: stream1: staging r1 failed: "
                                          r"refused: requirements.txt line 1 is odd$"):
        work.stage(built.artifact, built.manifest)


def test_host_program_leaves_nothing_of_a_release_when_the_disk_fills(built, tmp_path, monkeypatch):
    """stage_release.py on ENOSPC mid-install: the release, the new shared venv, the staging directory and
    the upload are all gone, and the one line it prints names the error."""
    releases, venvs = tmp_path / "releases", tmp_path / "venvs"
    releases.mkdir()
    venvs.mkdir()
    upload = releases / ".r1.tar.gz"
    upload.write_bytes(built.artifact.read_bytes())

    def full(path: Path, requirements, wheels) -> None:
        # The disk fills half way through the shared venv: some of it is written.
        (path / "lib").mkdir(parents=True)
        (path / "lib" / "half.so").write_bytes(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path / "lib" / "more.so"))

    monkeypatch.setattr(stage_release, "_venv", full)
    request = json.dumps({"artifact": str(upload), "releases": str(releases), "venvs": str(venvs),
                          "manifest": built.manifest.to_json().decode(), "key": built.deps.key,
                          "app_requirement": built.deps.app_requirement})
    monkeypatch.setattr(sys, "stdin", io.StringIO(request + "\n"))
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert stage_release.main() == answer.FAILED
    assert list(releases.iterdir()) == [] and list(venvs.iterdir()) == []
    assert "No space left on device" in err.getvalue() and len(err.getvalue().splitlines()) == 1
