"""What Roadie does on one stream host over SSH: stage a release, switch `current`, restart, health-check.

Layout (DESIGN.md): /srv/stream/releases/<id>/ (app, venv, manifest.json), /srv/stream/shared/,
/srv/stream/current -> releases/<id>, switched atomically (a temporary link renamed over it).
"""

from __future__ import annotations

import io
import json
import math
import shlex
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from roadie import remote
from roadie.core import contract
from roadie.core.cli import human_bytes
from roadie.core.errors import RoadieError
from roadie.deploy.release import Manifest, check_release_id
from roadie.deploy.wheelhouse import Dependencies

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

BASE = contract.STREAM_ROOT
RELEASES = contract.STREAM_RELEASES
VENVS = contract.STREAM_VENVS     # shared venvs, one per dependency set (release.dependencies)
CURRENT = contract.STREAM_CURRENT
PREVIOUS = BASE / "previous"
ENV_FILE = contract.STREAM_ENV_FILE
SERVICE = "stream.service"
TASK_WRAPPER = "/usr/local/sbin/stream-task"   # roles/streaming: migrate and seed, arguments checked
COMPLETE_MARK = ".roadie-complete"
ALREADY_STAGED = "already staged"   # what stage_release.py prints when the release is complete there already
STAGE_PROGRAM = "stage_release.py"   # roadie/remote/: unpacks and checks a release on the host
HEALTH_URL = contract.HEALTH_URL   # through nginx, as the balancer sees the host
FREE_SPACE_PROGRAM = "free_space.py"   # roadie/remote/: measures a host's room for a release, changes nothing
LIST_PROGRAM = "list_releases.py"    # roadie/remote/: current, previous and the complete releases
HEALTH_PROGRAM = "healthz.py"        # roadie/remote/: one /healthz answer, read on the host
PRUNE_PROGRAM = "prune_releases.py"  # roadie/remote/: removes old releases and the venvs left unused
# Kept free beyond a release's estimate, the larger of the two: the service and the system keep writing
# logs while a release stages, and the venv figure below is an estimate.
SPACE_MARGIN_BYTES = 16 * 1024 * 1024
SPACE_MARGIN_FRACTION = 0.05
# A venv built from a release's wheels: `python -m venv` with its own pip (25.2 MiB on disk, measured on
# Python 3.11), plus the wheels installed and byte-compiled. The app's wheels (4.8 MiB zipped, psycopg's
# shared libraries most of it) took 21.7 MiB installed, 4.5x; VENV_FACTOR rounds that up.
VENV_BASE_BYTES = 28 * 1024 * 1024
VENV_FACTOR = 5
# What a host's tools say when a write finds its filesystem full (ENOSPC, EDQUOT in the C locale).
NO_SPACE_SIGNS = ("No space left on device", "Disk quota exceeded")


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _run(conn: HostConnection, command: str, *, what: str, timeout: int | None = 300):
    result = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
    if result.exited != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RoadieError(f"{host_name(conn)}: {what} failed: {detail[0]}")
    return result


def host_name(conn: HostConnection) -> str:
    host = getattr(conn, "inventory_host", None)
    return host.name if host else str(getattr(conn, "host", "host"))


@dataclass
class Releases:
    """The releases present on one host."""

    host: str
    current: str | None
    previous: str | None
    kept: list[str] = field(default_factory=list)   # complete releases, oldest first

    def as_dict(self) -> dict:
        return {"host": self.host, "current": self.current, "previous": self.previous, "kept": self.kept}


def releases(conn: HostConnection) -> Releases:
    """current, previous and the complete releases kept on the host."""
    out = _run(conn, remote.command(LIST_PROGRAM, BASE), what="listing releases", timeout=60)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Releases(host_name(conn), data["current"], data["previous"], data["kept"])


def stage(conn: HostConnection, artifact_path: str, manifest: Manifest,
          deps: Dependencies | None = None) -> bool:
    """Upload-side done: unpack what `manifest` (verified on the controller) lists, check it, give it a
    venv. False if already staged.

    The host program (roadie/remote/stage_release.py) gets the manifest on stdin and trusts nothing in
    the tarball: GNU tar extracts only the listed members, the tree must match their sha256, and pip
    installs in hash-checking mode from the release's own wheels. A refusal leaves nothing of the release.
    With `deps`, the venv is the host's shared one for that dependency set (VENVS/<key>-py<version>,
    built once, linked as the release's `venv`; the app runs from the release's own `app/`, which
    gunicorn's `chdir` and stream-task's working directory put first on sys.path). Without it, or on
    a host without VENVS, the release builds its own venv in place.
    """
    release_id = check_release_id(manifest.release_id)
    # No separate check for a complete release: the host program finds it, removes the upload and says so.
    request = json.dumps({"artifact": str(artifact_path), "releases": str(RELEASES), "venvs": str(VENVS),
                          "manifest": manifest.to_json().decode(), "key": deps.key if deps else "",
                          "app_requirement": deps.app_requirement if deps else ""})
    result = conn.run(remote.command(STAGE_PROGRAM), hide=True, warn=True, in_stream=io.StringIO(request + "\n"),
                      timeout=600)
    if result.exited != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RoadieError(f"{host_name(conn)}: staging {release_id} failed: {detail[0]}")
    return ALREADY_STAGED not in result.stdout


# ------------------------------------------------------------------ room for a release


def _blocks(n: int, block: int) -> int:
    """`n` bytes rounded up to whole allocation units."""
    return -(-n // block) * block


def _bytes(n: int) -> str:
    return f"{human_bytes(n)} ({n} bytes)"


@dataclass(frozen=True)
class Room:
    """One filesystem a release writes to on a host: its directory, the bytes free there, the bytes needed."""

    path: str
    free: int
    needed: int

    @property
    def enough(self) -> bool:
        return self.free >= self.needed

    def describe(self, host: str) -> str:
        return f"{host}:{self.path}: {_bytes(self.free)} free, {_bytes(self.needed)} needed"


@dataclass(frozen=True)
class Space:
    """The room one host has for a release: one Room per filesystem staging writes to (the releases
    directory's first; the shared venvs' when they are on another filesystem and the venv is still to
    build). No rooms when the release is staged there already."""

    host: str
    rooms: tuple[Room, ...]
    staged: bool = False
    upload: int | None = None   # bytes of the upload file found on the host, if any
    present: Releases | None = None   # the host's releases, when the measure was asked for them

    @property
    def short(self) -> tuple[Room, ...]:
        return tuple(room for room in self.rooms if not room.enough)

    @property
    def enough(self) -> bool:
        return not self.short

    def describe(self) -> str:
        """Every short filesystem as `host:path: X free, Y needed`, joined by '; '."""
        return "; ".join(room.describe(self.host) for room in self.short)


def unpacked_bytes(manifest: Manifest, block: int) -> int:
    """Disk the unpacked payload takes in releases/<id>: every listed file rounded up to whole blocks, a
    block per listed directory, and the manifest.json the host writes beside them."""
    total = _blocks(len(manifest.to_json()), block)
    for member in manifest.members:
        total += _blocks(member.size, block) if member.type == "file" else block
    return total


def release_bytes(manifest: Manifest, artifact_bytes: int, block: int) -> int:
    """The peak a release takes on the releases filesystem while it stages, its venv aside: the uploaded
    artifact, payload.tar.gz extracted from it in the staging directory, and the unpacked tree (all three
    are there together until stage_release.py removes the first two)."""
    return artifact_bytes + _blocks(manifest.payload_size, block) + unpacked_bytes(manifest, block)


def venv_bytes(manifest: Manifest) -> int:
    """An estimate of a venv built from the release's wheels: VENV_BASE_BYTES + VENV_FACTOR x the wheels'
    bytes (the app's own wheel included: a shared venv leaves it out, but the app is byte-compiled in the
    release instead)."""
    wheels = sum(m.size for m in manifest.members
                 if m.type == "file" and m.path.startswith("wheels/") and m.path.endswith(".whl"))
    return VENV_BASE_BYTES + VENV_FACTOR * wheels


def with_margin(n: int) -> int:
    """`n` plus the margin kept free (the larger of SPACE_MARGIN_BYTES and SPACE_MARGIN_FRACTION of it);
    0 stays 0."""
    return n + max(SPACE_MARGIN_BYTES, math.ceil(n * SPACE_MARGIN_FRACTION)) if n else 0


def room_for(host: str, measured: dict, manifest: Manifest, artifact_bytes: int) -> Space:
    """The Space a release needs, from what roadie/remote/free_space.py measured on `host`.

    Releases filesystem: release_bytes, plus venv_bytes when the venv is built inside the release or
    the shared venvs directory is on the same filesystem. Shared venvs on another filesystem: venv_bytes
    there. No venv is counted when the host's shared venv for the dependency set is complete; nothing at
    all when the release is staged already. Each filesystem keeps with_margin's margin.
    """
    upload = measured.get("upload")
    listed = measured.get("present")
    present = Releases(host, listed["current"], listed["previous"], listed["kept"]) if listed else None
    if measured["staged"]:
        return Space(host, (), staged=True, upload=upload, present=present)
    releases, venvs = measured["releases"], measured["venvs"]
    here = release_bytes(manifest, artifact_bytes, releases["block"])
    venv = 0 if measured["venv_ready"] else venv_bytes(manifest)
    apart = measured["venv"] == "shared" and venvs is not None and venvs["device"] != releases["device"]
    rooms = [Room(releases["path"], releases["free"], with_margin(here + (0 if apart else venv)))]
    if apart and venv:
        rooms.append(Room(venvs["path"], venvs["free"], with_margin(venv)))
    return Space(host, tuple(rooms), upload=upload, present=present)


def space(conn: HostConnection, manifest: Manifest, artifact_bytes: int, deps: Dependencies | None,
          upload: str = "", *, with_releases: bool = False) -> Space:
    """The room for release `manifest` (its artifact `artifact_bytes` long) on the host, measured there
    by roadie/remote/free_space.py before anything is uploaded; `upload` also gets that file's size.
    `with_releases` also lists the host's releases (Space.present) in the same round trip."""
    release_id = check_release_id(manifest.release_id)
    command = remote.command(FREE_SPACE_PROGRAM, "--releases", RELEASES, "--venvs", VENVS, "--release", release_id,
                             "--key", deps.key if deps else "", "--upload", upload,
                             *(("--base", BASE) if with_releases else ()))
    out = _run(conn, command, what="measuring free space", timeout=60)
    try:
        measured = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RoadieError(f"{host_name(conn)}: measuring free space failed: no JSON answer") from None
    return room_for(host_name(conn), measured, manifest, artifact_bytes)


def _discard(conn: HostConnection, upload: str) -> None:
    conn.run(f"rm -f -- {_q(upload)}", hide=True, warn=True, in_stream=False, timeout=60)


def upload_failure(conn: HostConnection, manifest: Manifest, artifact_bytes: int, deps: Dependencies | None,
                   upload: str, exc: BaseException) -> str:
    """One line for an upload to `upload` that failed with `exc`; the partial upload is removed.

    SFTP reports a full filesystem as a bare `Failure` (paramiko's OSError), so the host is measured
    before the partial file goes: when less is free than the rest of the artifact, it is out of space.
    """
    host = host_name(conn)
    reason = f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no detail'}"
    try:
        found = space(conn, manifest, artifact_bytes, deps, upload)
    except Exception as measuring:  # the upload's own error is the one to report
        found, reason = None, f"{reason} (free space unknown: {measuring})"
    finally:
        _discard(conn, upload)
    if found is not None and found.rooms:
        room = found.rooms[0]
        written = found.upload or 0
        if any(sign in reason for sign in NO_SPACE_SIGNS) or room.free < artifact_bytes - written:
            return (f"{host}: no space left on device uploading {manifest.release_id} to {host}:{room.path} "
                    f"({reason}): {_bytes(room.free)} free, {_bytes(room.needed)} needed; "
                    "the partial upload was removed")
    return (f"{host}: uploading {manifest.release_id} to {host}:{upload} failed ({reason}); "
            "the partial upload was removed")


def staging_failure(conn: HostConnection, manifest: Manifest, artifact_bytes: int, deps: Dependencies | None,
                    upload: str, error: str) -> str:
    """One line for stage()'s `error`: a full filesystem is named with its free and needed bytes.

    roadie/remote/stage_release.py removes what it made (the release directory, a new shared venv, its
    staging directory, the upload) whatever failed; the upload is removed here too, in case the program
    never started.
    """
    _discard(conn, upload)
    if not any(sign in error for sign in NO_SPACE_SIGNS):
        return error
    host = host_name(conn)
    try:
        found = space(conn, manifest, artifact_bytes, deps)
    except Exception:  # the staging error is the one to report
        return error
    rooms = [room for room in found.rooms if room.path in error] or list(found.short) or list(found.rooms)
    if not rooms:
        return error
    room = rooms[0]
    detail = error.removeprefix(f"{host}: ")
    return (f"{host}: no space left on device staging {manifest.release_id} in {host}:{room.path}: "
            f"{_bytes(room.free)} free now, {_bytes(room.needed)} needed; the partial release was removed "
            f"({detail})")


def switch(conn: HostConnection, release_id: str) -> str | None:
    """Point `current` at a staged release atomically; `previous` keeps the one it replaced.

    Root owns /srv/stream, so the switch goes through the role's checked wrapper (`stream-task switch`),
    which checks the id and the completion mark and renames a fresh link over `current`.
    """
    check_release_id(release_id)
    out = _run(conn, f"sudo -n {TASK_WRAPPER} switch {_q(release_id)}", what=f"switching to {release_id}",
               timeout=60)
    old = out.stdout.strip()
    return old or None


def restart(conn: HostConnection) -> None:
    """Restart the stream service (graceful stop, then start)."""
    _run(conn, f"sudo -n systemctl restart {SERVICE}", what="restarting the stream service", timeout=120)


@dataclass
class Health:
    """One /healthz answer."""

    status: int
    release: str | None
    database: str | None
    cache: str | None
    error: str = ""

    def ok_for(self, release_id: str) -> bool:
        return (self.status == 200 and self.release == release_id and self.database == "ok"
                and self.cache == "ok")

    def describe(self) -> str:
        if self.error:
            return self.error
        return f"HTTP {self.status}, release {self.release}, database {self.database}, cache {self.cache}"


def health(conn: HostConnection, url: str = HEALTH_URL) -> Health:
    out = _run(conn, remote.command(HEALTH_PROGRAM, url), what="health check", timeout=30)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    body = data.get("body") or {}
    return Health(data.get("status", 0), body.get("release"), body.get("database"), body.get("cache"),
                  data.get("error", ""))


def health_gate(conn: HostConnection, release_id: str, *, passes: int = 3, interval: float = 0.5,
                timeout: float = 60) -> Health:
    """`passes` healthy answers in a row reporting `release_id`, within `timeout`; else RoadieError."""
    deadline = time.monotonic() + timeout
    streak = 0
    last = None
    while time.monotonic() < deadline:
        last = health(conn)
        streak = streak + 1 if last.ok_for(release_id) else 0
        if streak >= passes:
            return last
        time.sleep(interval)
    raise RoadieError(f"{host_name(conn)}: health gate failed after {timeout:.0f} s: "
                      f"{last.describe() if last else 'no answer'} (want release {release_id}, db and cache ok)")


def migrate(conn: HostConnection, release_id: str) -> str:
    """Run the release's migrations once, as the service user with the service's environment.

    Through the role's checked wrapper, the one thing sudo lets the deploy user run for it.
    """
    return _run(conn, f"sudo -n {TASK_WRAPPER} migrate {_q(release_id)}", what=f"migrations of {release_id}",
                timeout=300).stdout


def prune(conn: HostConnection, keep: int) -> list[str]:
    """Remove complete releases beyond the newest `keep`, never current or previous, then the shared
    venvs no release left links to. The releases removed."""
    state = releases(conn)
    protected = {state.current, state.previous}
    removable = [r for r in state.kept if r not in protected]
    surplus = max(0, len(state.kept) - keep)
    doomed = removable[:surplus]
    if doomed:
        _run(conn, remote.command(PRUNE_PROGRAM, BASE, *doomed), what="pruning old releases and unused venvs",
             timeout=120)
    return doomed


def seed(conn: HostConnection, release_id: str, with_db: bool) -> str:
    """Load the reference catalogue (once, `with_db`) and write its audio files into shared/media."""
    cmd = f"sudo -n {TASK_WRAPPER} seed {_q(release_id)}" + ("" if with_db else " --no-db")
    return _run(conn, cmd, what="seeding the catalogue", timeout=300).stdout
