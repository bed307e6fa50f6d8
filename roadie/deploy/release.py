"""Offline release artifacts of the stream service: what a release is, and checking one end to end.

`<release-id>.tar.gz` holds exactly two files:
  manifest.json     format, release_id, git_sha, dirty, built_at, python, platform,
                    payload_sha256, payload_size, members (every payload directory, and every
                    regular file with its size and sha256: nothing else is installed)
  payload.tar.gz    requirements.txt   app/requirements.txt's pins plus the app itself (streamsvc==<version>),
                                       each line `name==version --hash=sha256:<wheel>` (pip's hash-checking mode)
                    app/gunicorn.conf.py, app/streamsvc/**
                    wheels/*.whl       every dependency, and a wheel of the app made by the build

On a host (no package index reachable), in /srv/stream/releases/<release-id>/, after `verify` on the
controller, roadie/remote/stage_release.py (sent by stream_host.stage with the verified manifest):
  GNU tar extracts only the listed members, the tree must be exactly those files with their sha256
  python3 -m venv venv && venv/bin/python -m pip install --require-hashes --only-binary=:all: --no-index
      --no-deps --find-links wheels -r requirements.txt   (a requirements file the host regenerates)
  (cd app && ../venv/bin/python -m streamsvc migrate)   (app/ first on sys.path: this release's code)
  venv/bin/gunicorn -c app/gunicorn.conf.py             (the service reads manifest.json for its id)
`fab deploy` shares one venv per dependency set instead (wheelhouse.dependencies: the requirements and
wheels less the app's own); the app always runs from the release's app/ (gunicorn's `chdir`).

Requirement files carry exact pins only: an option line (`-r`, `-e`, `--index-url`, `--find-links`,
...), a URL or a path is refused at build, by `verify` and again on the host (the same check,
roadie/remote/release_checks.py). Building an artifact: builder.py; its wheels: wheelhouse.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
import zlib
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from roadie.core.errors import RoadieError
from roadie.remote.release_checks import (
    RELEASE_ID,
    SHA256,
    Member,
    StageError,
    check_members,
    check_pins,
    parse_requirements,
)

PYTHON_VERSION = "3.11"
PLATFORM = "manylinux2014_x86_64"
FORMAT = 2   # 2: members, and requirements pinned by sha256
MANIFEST_NAME = "manifest.json"
PAYLOAD_NAME = "payload.tar.gz"
MAX_MANIFEST = 1024 * 1024
CHUNK = 1024 * 1024
REQUIRED_IN_PAYLOAD = ["requirements.txt", "app/gunicorn.conf.py", "app/streamsvc/__init__.py"]
# The payload's requirements.txt ends with this line and the app's own requirement (name==version).
APP_MARKER = "# The service itself: its wheel is made by roadie.release, not downloaded."

DEFAULT_ID = re.compile(r"[0-9]{14}-[0-9a-f]{7,40}(-dirty)?", re.ASCII)
USER_ID = RELEASE_ID     # what the host program accepts (roadie/remote/stage_release.py)
_SHA1 = re.compile(r"[0-9a-f]{40}", re.ASCII)


@dataclass(frozen=True)
class Manifest:
    """What a release is: manifest.json, beside the payload it describes."""

    release_id: str
    git_sha: str
    dirty: bool
    built_at: str
    python: str
    platform: str
    payload_sha256: str
    payload_size: int
    members: tuple[Member, ...]   # every payload entry, sorted by path: what a host may install
    format: int = FORMAT

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["members"] = [member.as_dict() for member in self.members]
        return data

    def to_json(self) -> bytes:
        return (json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Release:
    """A built artifact and its manifest."""

    path: Path
    manifest: Manifest

    @property
    def id(self) -> str:
        return self.manifest.release_id

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def check_release_id(release_id: Any) -> str:
    """`release_id` if it is safe as a directory name on hosts, else RoadieError.

    Default ids are `<UTC yyyymmddHHMMSS>-<git short sha>[-dirty]`; a given id is 1-64 characters
    of [A-Za-z0-9._-] that does not start with a dot or a dash.
    """
    if not isinstance(release_id, str) or not (DEFAULT_ID.fullmatch(release_id) or USER_ID.fullmatch(release_id)):
        shown = repr(release_id)[:80]
        raise RoadieError(f"bad release id {shown}: use 1-64 characters of A-Z a-z 0-9 . _ - "
                          "not starting with . or -")
    return release_id


def default_release_id(now: datetime, short_sha: str, dirty: bool) -> str:
    return f"{now.astimezone(UTC):%Y%m%d%H%M%S}-{short_sha}" + ("-dirty" if dirty else "")


def file_sha256(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file, read in chunks."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as data:
        while chunk := data.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ------------------------------------------------------------------ verification


def parse_manifest(data: bytes, where: str) -> Manifest:
    """A Manifest from manifest.json bytes; RoadieError naming `where` and the first problem."""
    try:
        raw = json.loads(data)
    except ValueError:
        raise RoadieError(f"{where}: manifest.json is not valid JSON") from None
    if not isinstance(raw, dict):
        raise RoadieError(f"{where}: manifest.json is not a JSON object")
    types = {"format": int, "release_id": str, "git_sha": str, "dirty": bool, "built_at": str, "python": str,
             "platform": str, "payload_sha256": str, "payload_size": int, "members": list}
    for key, kind in types.items():
        if key not in raw:
            raise RoadieError(f"{where}: manifest.json has no {key}")
        value = raw[key]
        if type(value) is not kind:
            wanted = {int: "an integer", str: "a string", bool: "true or false", list: "a list"}[kind]
            raise RoadieError(f"{where}: manifest.json {key} must be {wanted}")
    if raw["format"] != FORMAT:
        raise RoadieError(f"{where}: manifest format {raw['format']} is not supported (expected {FORMAT})")
    try:
        check_release_id(raw["release_id"])
    except RoadieError as exc:
        raise RoadieError(f"{where}: manifest.json: {exc}") from None
    if not _SHA1.fullmatch(raw["git_sha"]):
        raise RoadieError(f"{where}: manifest.json git_sha is not a full git commit id")
    try:
        datetime.strptime(raw["built_at"], "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise RoadieError(f"{where}: manifest.json built_at is not a UTC time like 2025-01-31T12:00:00Z") from None
    if not re.fullmatch(r"3\.[0-9]{1,2}", raw["python"]):
        raise RoadieError(f"{where}: manifest.json python is not a Python version like 3.11")
    if not SHA256.fullmatch(raw["payload_sha256"]):
        raise RoadieError(f"{where}: manifest.json payload_sha256 is not a sha256 hex digest")
    if raw["payload_size"] < 0:
        raise RoadieError(f"{where}: manifest.json payload_size is negative")
    try:
        members = tuple(check_members(raw["members"]))
    except StageError as exc:
        raise RoadieError(f"{where}: manifest.json members: {exc}") from None
    files = {m.path for m in members if m.type == "file"}
    missing = [name for name in REQUIRED_IN_PAYLOAD if name not in files]
    if missing:
        raise RoadieError(f"{where}: manifest.json lists no file {missing[0]}")
    return Manifest(**{key: raw[key] for key in types if key != "members"}, members=members)


_TAR_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a device",
              tarfile.BLKTYPE: "a device", tarfile.FIFOTYPE: "a FIFO"}


def _check_payload_members(tar: tarfile.TarFile, manifest: Manifest, where: str) -> bytes:
    """The payload holds exactly the manifest's members, each once, with their sha256; its requirements.txt."""
    listed = {m.path: m for m in manifest.members}
    seen: set[str] = set()
    requirements = b""
    for member in tar:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or "\\" in member.name:
            raise RoadieError(f"{where}: payload entry {member.name!r} would land outside the release directory")
        if not (member.isreg() or member.isdir()):
            kind = _TAR_KINDS.get(member.type, "not a regular file or directory")
            raise RoadieError(f"{where}: payload entry {member.name!r} is {kind}; a release holds regular files "
                              "and directories only")
        if member.name in seen:
            raise RoadieError(f"{where}: payload entry {member.name!r} appears twice")
        seen.add(member.name)
        want = listed.get(member.name)
        if want is None:
            raise RoadieError(f"{where}: payload entry {member.name!r} is not in the manifest")
        if want.type != ("dir" if member.isdir() else "file"):
            raise RoadieError(f"{where}: payload entry {member.name!r} is not a {want.type}, as the manifest says")
        if member.isreg():
            if member.name == "requirements.txt" and member.size > MAX_MANIFEST:
                raise RoadieError(f"{where}: requirements.txt is larger than {MAX_MANIFEST} bytes")
            sha, size = hashlib.sha256(), 0
            data = tar.extractfile(member)
            while chunk := data.read(CHUNK):
                sha.update(chunk)
                size += len(chunk)
                if member.name == "requirements.txt":
                    requirements += chunk
            if (sha.hexdigest(), size) != (want.sha256, want.size):
                raise RoadieError(f"{where}: payload file {member.name} does not match its sha256 in the manifest "
                                  "(tampered or corrupt)")
    missing = sorted(set(listed) - seen)
    if missing:
        raise RoadieError(f"{where}: payload has no {missing[0]}, which the manifest lists")
    return requirements


def verify(artifact: Path) -> Manifest:
    """Check a release artifact end to end; its Manifest, or RoadieError with one line saying what is wrong."""
    artifact = Path(artifact)
    where = artifact.name
    if not artifact.is_file():
        raise RoadieError(f"{artifact}: no such release artifact")
    try:
        with gzip.open(artifact, "rb") as gz:
            with tarfile.open(fileobj=gz, mode="r:") as outer:
                members = outer.getmembers()
                names = sorted(m.name for m in members)
                if names != [MANIFEST_NAME, PAYLOAD_NAME] or not all(m.isreg() for m in members):
                    raise RoadieError(f"{where}: expected exactly {MANIFEST_NAME} and {PAYLOAD_NAME}, "
                                      f"found {', '.join(names) or 'nothing'}")
                by_name = {m.name: m for m in members}
                if by_name[MANIFEST_NAME].size > MAX_MANIFEST:
                    raise RoadieError(f"{where}: manifest.json is larger than {MAX_MANIFEST} bytes")
                manifest = parse_manifest(outer.extractfile(by_name[MANIFEST_NAME]).read(), where)
                if where != f"{manifest.release_id}.tar.gz":
                    raise RoadieError(f"{where}: the manifest names release {manifest.release_id}; "
                                      "the file name does not match")
                sha, size = hashlib.sha256(), 0
                payload = outer.extractfile(by_name[PAYLOAD_NAME])
                while chunk := payload.read(CHUNK):
                    sha.update(chunk)
                    size += len(chunk)
                if size != manifest.payload_size:
                    raise RoadieError(f"{where}: payload is {size} bytes, the manifest says {manifest.payload_size}")
                if sha.hexdigest() != manifest.payload_sha256:
                    raise RoadieError(f"{where}: payload sha256 does not match the manifest (tampered or corrupt)")
                with tarfile.open(fileobj=outer.extractfile(by_name[PAYLOAD_NAME]), mode="r:gz") as inner:
                    requirements = _check_payload_members(inner, manifest, where)
            while gz.read(CHUNK):  # to the end: the gzip trailer (CRC, length) of the whole artifact
                pass
    except RoadieError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise RoadieError(f"{where}: not a readable release archive (truncated or corrupt): {one_line(exc)}") from None
    try:
        check_pins(parse_requirements(requirements, require_hashes=True), list(manifest.members))
    except StageError as exc:
        raise RoadieError(f"{where}: {exc}") from None
    return manifest
