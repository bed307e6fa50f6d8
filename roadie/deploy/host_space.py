"""The room a release needs on a stream host, measured before anything is uploaded.

roadie/remote/free_space.py measures each filesystem staging writes to (the releases directory's, and
the shared venvs' when they are apart); `room_for` sets that against what the release needs: the upload,
the payload extracted beside it, the unpacked tree, and a venv unless the host has the dependency set's
already. When an upload or staging fails for want of space anyway, `upload_failure` and
`staging_failure` say so in one line with the bytes free and needed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roadie import remote
from roadie.core.cli import human_bytes
from roadie.core.errors import RoadieError
from roadie.deploy import stream_host
from roadie.deploy.release import Manifest, check_release_id
from roadie.deploy.wheelhouse import Dependencies

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

FREE_SPACE_PROGRAM = "free_space.py"   # roadie/remote/: measures a host's room for a release, changes nothing
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
    present: stream_host.Releases | None = None   # the host's releases, when the measure was asked for them

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
    present = stream_host.Releases(host, listed["current"], listed["previous"], listed["kept"]) if listed else None
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
    command = remote.command(FREE_SPACE_PROGRAM, "--releases", stream_host.RELEASES, "--venvs", stream_host.VENVS,
                             "--release", release_id, "--key", deps.key if deps else "", "--upload", upload,
                             *(("--base", stream_host.BASE) if with_releases else ()))
    out = stream_host.run(conn, command, what="measuring free space", timeout=60)
    try:
        measured = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RoadieError(f"{stream_host.host_name(conn)}: measuring free space failed: no JSON answer") from None
    return room_for(stream_host.host_name(conn), measured, manifest, artifact_bytes)


def _discard(conn: HostConnection, upload: str) -> None:
    conn.run(f"rm -f -- {stream_host.quoted(upload)}", hide=True, warn=True, in_stream=False, timeout=60)


def upload_failure(conn: HostConnection, manifest: Manifest, artifact_bytes: int, deps: Dependencies | None,
                   upload: str, exc: BaseException) -> str:
    """One line for an upload to `upload` that failed with `exc`; the partial upload is removed.

    SFTP reports a full filesystem as a bare `Failure` (paramiko's OSError), so the host is measured
    before the partial file goes: when less is free than the rest of the artifact, it is out of space.
    """
    host = stream_host.host_name(conn)
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
    host = stream_host.host_name(conn)
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
