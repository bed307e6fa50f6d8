"""Offline release artifacts of the stream service: app source, every wheel it needs, a manifest.

`<release-id>.tar.gz` holds exactly two files:
  manifest.json     format, release_id, git_sha, dirty, built_at, python, platform,
                    payload_sha256, payload_size, members (every payload directory, and every
                    regular file with its size and sha256: nothing else is installed)
  payload.tar.gz    requirements.txt   app/requirements.txt's pins plus the app itself (streamsvc==<version>),
                                       each line `name==version --hash=sha256:<wheel>` (pip's hash-checking mode)
                    app/gunicorn.conf.py, app/streamsvc/**
                    wheels/*.whl       every dependency, and a wheel of the app made here

On a host (no package index reachable), in /srv/stream/releases/<release-id>/, after `verify` on the
controller, roadie/remote/stage_release.py (sent by stream_host.stage with the verified manifest):
  GNU tar extracts only the listed members, the tree must be exactly those files with their sha256
  python3 -m venv venv && venv/bin/python -m pip install --require-hashes --only-binary=:all: --no-index
      --no-deps --find-links wheels -r requirements.txt   (a requirements file the host regenerates)
  (cd app && ../venv/bin/python -m streamsvc migrate)   (app/ first on sys.path: this release's code)
  venv/bin/gunicorn -c app/gunicorn.conf.py             (the service reads manifest.json for its id)
`fab deploy` shares one venv per dependency set instead (`dependencies`: the requirements and wheels
less the app's own); the app always runs from the release's app/ (gunicorn's `chdir`).

Requirement files carry exact pins only: an option line (`-r`, `-e`, `--index-url`, `--find-links`,
...), a URL or a path is refused at build, by `verify` and again on the host (the same check,
roadie/remote/stage_release.py). The build refuses a download that brings a wheel no line pins: hosts
install with --no-deps, so app/requirements.txt must be the whole closure.

The payload is reproducible: the same app tree and wheels give the same bytes (sorted entries, a
fixed mtime, root ownership without names, normalised modes, gzip without name or time; the app's
wheel is written here the same way, so no build backend or network is needed for it). Wheels
are downloaded on the controller for CPython 3.11 manylinux x86_64 and cached in
.cache/wheels/<hash of requirements.txt and target>/, so a second build does not use the network; the
cache records each wheel's sha256 when it is downloaded and a build refuses a cache that changed since.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
import zlib
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from roadie.core import paths
from roadie.core.errors import RoadieError
from roadie.remote.stage_release import (
    RELEASE_ID,
    SHA256,
    Member,
    Requirement,
    StageError,
    canonical,
    check_members,
    check_pins,
    parse_requirement_line,
    parse_requirements,
)

APP_DIR = paths.ROOT / "app"
WHEEL_CACHE = paths.ROOT / ".cache" / "wheels"
PYTHON_VERSION = "3.11"
PLATFORM = "manylinux2014_x86_64"
PIP_TARGET = ["--only-binary=:all:", "--platform", PLATFORM, "--python-version", PYTHON_VERSION,
              "--implementation", "cp", "--abi", "cp311"]
FORMAT = 2   # 2: members, and requirements pinned by sha256
FIXED_MTIME = 315532800  # 1980-01-01T00:00:00Z, as in wheels: no build time leaks into the payload
MANIFEST_NAME = "manifest.json"
PAYLOAD_NAME = "payload.tar.gz"
MAX_MANIFEST = 1024 * 1024
CHUNK = 1024 * 1024
# App files the payload carries: the package and gunicorn's settings beside it.
APP_FILES = ["gunicorn.conf.py"]
APP_PACKAGE = "streamsvc"
REQUIRED_IN_PAYLOAD = ["requirements.txt", "app/gunicorn.conf.py", "app/streamsvc/__init__.py"]
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# The payload's requirements.txt ends with this line and the app's own requirement (name==version).
APP_MARKER = "# The service itself: its wheel is made by roadie.release, not downloaded."
PINS_HEADER = ("# Written by roadie.release: exact pins, each to the sha256 of its wheel in wheels/. Hosts install\n"
               "# these and nothing else (pip --require-hashes --only-binary=:all: --no-index --no-deps).\n")
_DIST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*", re.ASCII)

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


# ------------------------------------------------------------------ git


def git_state(app_dir: Path) -> tuple[str, str, bool]:
    """(full sha, short sha, dirty) of the checkout holding `app_dir`; dirty = uncommitted changes in it."""

    def git(*args: str) -> str:
        try:
            result = subprocess.run(["git", "-C", str(app_dir), *args], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise RoadieError("git is not installed; it names the release") from None
        if result.returncode != 0:
            raise RoadieError(f"{app_dir} is not in a git checkout with a commit; cannot name the release")
        return result.stdout.strip()

    sha = git("rev-parse", "--verify", "HEAD")
    short = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=all", "--", "."))
    return sha, short, dirty


# ------------------------------------------------------------------ wheels


def _source_requirements(requirements: Path) -> list[Requirement]:
    """The pins of app/requirements.txt; RoadieError for an option line, a URL, a path or a loose pin."""
    try:
        return parse_requirements(requirements.read_bytes(), require_hashes=False)
    except StageError as exc:
        raise RoadieError(f"{requirements}: {exc}") from None
    except OSError as exc:
        raise RoadieError(f"{requirements}: {_one_line(exc)}") from None


def _pin_key(name: str, version: str) -> tuple[str, str]:
    """How a wheel file name spells a distribution and version (PEP 427 escaping, lower case)."""
    return re.sub(r"[-_.]+", "_", name).lower(), version.replace("-", "_").lower()


def _wheel_key(file_name: str) -> tuple[str, str] | None:
    """(name, version) of a wheel file name `name-version[-build]-python-abi-platform.whl`, else None."""
    parts = file_name.removesuffix(".whl").split("-")
    if not file_name.endswith(".whl") or len(parts) not in (5, 6):
        return None
    return _pin_key(parts[0], parts[1])


def _recorded_wheels(target: Path) -> dict[str, str]:
    """Wheel name -> sha256 recorded at download; RoadieError if the cache changed since."""
    try:
        recorded = json.loads((target / ".complete").read_text())["wheels"]
    except (ValueError, KeyError, TypeError):
        # Written before the sha256 were recorded: record them now, as the download would have.
        recorded = {p.name: _digest(p)[0] for p in sorted(target.glob("*.whl"))}
        (target / ".complete").write_text(json.dumps({"wheels": recorded}, indent=2, sort_keys=True) + "\n")
    present = {p.name for p in target.glob("*.whl")}
    if not isinstance(recorded, dict) or present != set(recorded):
        raise RoadieError(f"wheel cache {target} does not hold the wheels it recorded; remove it and build again")
    for name, digest in sorted(recorded.items()):
        if _digest(target / name)[0] != digest:
            raise RoadieError(f"wheel cache {target}: {name} changed since its download; remove it and build again")
    return recorded


def wheelhouse(requirements: Path, cache_root: Path = WHEEL_CACHE) -> Path:
    """A directory with a wheel of every requirement for the hosts' Python, downloaded once and cached.

    Only exact pins are downloaded (pip in hash-checking mode where app/requirements.txt pins hashes),
    and the download must bring no wheel the file does not pin: hosts install with --no-deps.
    """
    pins = _source_requirements(requirements)
    key = hashlib.sha256(requirements.read_bytes() + "\0".join(PIP_TARGET).encode()).hexdigest()[:16]
    target = cache_root / key
    if (target / ".complete").is_file():
        _recorded_wheels(target)
        return target
    if target.exists():  # left by an interrupted run that predates the atomic rename
        shutil.rmtree(target)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))
    try:
        # pip reads what the check above accepted, regenerated: nothing else from the file reaches it.
        asked = staging / ".requirements.txt"
        asked.write_text(canonical(pins))
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "-q",
                   *PIP_TARGET, "-r", str(asked), "-d", str(staging)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        asked.unlink()
        if result.returncode != 0:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("ERROR")]
            detail = lines[-1] if lines else f"exit status {result.returncode}"
            raise RoadieError(f"pip download of {requirements.name} failed: {detail}")
        wheels = sorted(p.name for p in staging.glob("*.whl"))
        if not wheels:
            raise RoadieError(f"pip download of {requirements.name} gave no wheels")
        pinned = {_pin_key(r.name, r.version) for r in pins}
        loose = [name for name in wheels if _wheel_key(name) not in pinned]
        if loose:
            raise RoadieError(f"pip download of {requirements.name} brought {loose[0]}, which no line pins; "
                              "hosts install with --no-deps: pin every dependency")
        recorded = {name: _digest(staging / name)[0] for name in wheels}
        (staging / ".complete").write_text(json.dumps({"wheels": recorded}, indent=2, sort_keys=True) + "\n")
        try:
            staging.rename(target)
        except OSError:
            if not (target / ".complete").is_file():  # not a concurrent build that finished first
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


# ------------------------------------------------------------------ reproducible archives


def _tarinfo(name: str, size: int = 0, mode: int = 0o644, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    info.mode = mode
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _package_files(app_dir: Path) -> dict[str, Path]:
    """Name relative to `app_dir` -> file, for the app package (no caches, dot files or symlinks)."""
    package = app_dir / APP_PACKAGE
    if not (package / "__init__.py").is_file():
        raise RoadieError(f"{package} is not a Python package")
    files = {}
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(app_dir)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or path.suffix in (".pyc", ".pyo"):
            continue
        if path.is_symlink():
            raise RoadieError(f"{path} is a symlink; a release carries regular files only")
        if path.is_file():
            files[rel.as_posix()] = path
    return files


def _project(app_dir: Path) -> dict[str, Any]:
    """The [project] table of app/pyproject.toml, with a usable name and version."""
    try:
        project = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise RoadieError(f"{app_dir / 'pyproject.toml'}: no readable [project] table ({_one_line(exc)})") from None
    name, version = str(project.get("name", "")), str(project.get("version", ""))
    if not _DIST_NAME.fullmatch(name) or not _VERSION.fullmatch(version):
        raise RoadieError(f"{app_dir / 'pyproject.toml'}: [project] needs a plain name and a version like 1.2.3")
    return project


def _zip_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, ZIP_EPOCH)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def app_wheel(app_dir: Path, files: dict[str, Path] | None = None) -> tuple[str, bytes]:
    """(file name, bytes) of a pure-Python wheel of the app package, the same bytes for the same tree."""
    project = _project(app_dir)
    dist = re.sub(r"[-_.]+", "_", project["name"]).lower()
    version = project["version"]
    info_dir = f"{dist}-{version}.dist-info"
    contents = [(name, path.read_bytes()) for name, path in sorted((files or _package_files(app_dir)).items())]
    metadata = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {version}"]
    if project.get("requires-python"):
        metadata.append(f"Requires-Python: {project['requires-python']}")
    metadata += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    contents.append((f"{info_dir}/METADATA", ("\n".join(metadata) + "\n").encode()))
    contents.append((f"{info_dir}/WHEEL", b"Wheel-Version: 1.0\nGenerator: roadie.release\n"
                                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"))
    scripts = project.get("scripts", {})
    if scripts:
        lines = ["[console_scripts]", *(f"{k} = {v}" for k, v in sorted(scripts.items()))]
        contents.append((f"{info_dir}/entry_points.txt", ("\n".join(lines) + "\n").encode()))
    contents.append((f"{info_dir}/top_level.txt", f"{APP_PACKAGE}\n".encode()))
    record = []
    for name, data in contents:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info_dir}/RECORD,,")
    contents.append((f"{info_dir}/RECORD", ("\n".join(record) + "\n").encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, data in contents:
            wheel.writestr(_zip_entry(name), data)
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue()


def _pinned_requirements(requirements: Path, project: dict[str, Any], files: dict[str, bytes],
                         app_wheel_sha256: str) -> bytes:
    """The payload's requirements.txt: app/requirements.txt's pins, each with the sha256 of the wheels
    the payload carries for it (pip's hash-checking mode), then the app's own wheel."""
    digests: dict[tuple[str, str], list[str]] = {}
    for name, data in files.items():
        key = _wheel_key(name.removeprefix("wheels/")) if name.startswith("wheels/") else None
        if key:
            digests.setdefault(key, []).append(hashlib.sha256(data).hexdigest())
    app_name = _pin_key(project["name"], project["version"])[0]
    pinned = []
    for requirement in _source_requirements(requirements):
        if _pin_key(requirement.name, "")[0] == app_name:
            raise RoadieError(f"{requirements} names the app itself ({requirement.pin}); the build adds it")
        found = sorted(digests.get(_pin_key(requirement.name, requirement.version), []))
        if not found:
            raise RoadieError(f"no wheel for {requirement.pin} among the wheels of this build "
                              f"({requirements.name} pins it)")
        if requirement.hashes:
            found = [digest for digest in found if digest in requirement.hashes]
            if not found:
                raise RoadieError(f"the wheel for {requirement.pin} does not match the sha256 "
                                  f"{requirements.name} pins")
        pinned.append(Requirement(requirement.name, requirement.version, tuple(found)))
    app = Requirement(project["name"], project["version"], (app_wheel_sha256,))
    return (PINS_HEADER + canonical(pinned) + f"\n{APP_MARKER}\n{app.line()}\n").encode()


def _payload_files(app_dir: Path, wheels_dir: Path) -> dict[str, Path | bytes]:
    """Archive name -> source file or content, for everything the payload carries.

    Wheels are read once, here: the sha256 the requirements pin are those of the bytes the payload holds.
    """
    requirements = app_dir / "requirements.txt"
    if not requirements.is_file():
        raise RoadieError(f"{requirements} is missing")
    project = _project(app_dir)
    files: dict[str, Path | bytes] = {}
    for name in APP_FILES:
        if not (app_dir / name).is_file():
            raise RoadieError(f"{app_dir / name} is missing")
        files[f"app/{name}"] = app_dir / name
    package = _package_files(app_dir)
    files.update({f"app/{name}": path for name, path in package.items()})
    if not wheels_dir.is_dir():
        raise RoadieError(f"wheel directory {wheels_dir} does not exist")
    wheels: dict[str, bytes] = {}
    for wheel in sorted(wheels_dir.glob("*.whl")):
        if wheel.is_symlink() or not wheel.is_file():
            raise RoadieError(f"{wheel} is not a regular file")
        wheels[f"wheels/{wheel.name}"] = wheel.read_bytes()
    wheel_name, wheel_bytes = app_wheel(app_dir, package)
    wheels[f"wheels/{wheel_name}"] = wheel_bytes
    files.update(wheels)
    files["requirements.txt"] = _pinned_requirements(requirements, project, wheels,
                                                     hashlib.sha256(wheel_bytes).hexdigest())
    return files


def _write_payload(files: dict[str, Path | bytes], out: Path) -> tuple[Member, ...]:
    """Write the payload; every member it holds, with the sha256 of the bytes written."""
    directories = {"wheels"}
    for name in files:
        directories.update(str(parent) for parent in PurePosixPath(name).parents if str(parent) != ".")
    entries = sorted([(d, None) for d in directories] + list(files.items()))
    members = []
    with open(out, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, source in entries:
            if source is None:
                tar.addfile(_tarinfo(name, mode=0o755, directory=True))
                members.append(Member(name, "dir"))
                continue
            mode = 0o644
            if isinstance(source, Path):
                with open(source, "rb") as data:
                    mode = 0o755 if os.fstat(data.fileno()).st_mode & 0o111 else 0o644
                    source = data.read()
            tar.addfile(_tarinfo(name, len(source), mode), io.BytesIO(source))
            members.append(Member(name, "file", len(source), hashlib.sha256(source).hexdigest()))
    try:
        check_members([m.as_dict() for m in members])
    except StageError as exc:
        raise RoadieError(f"the payload cannot be installed as it is: {exc}") from None
    return tuple(members)


def _digest(path: Path) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as data:
        while chunk := data.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def build(out_dir: Path, release_id: str | None = None, *, app_dir: Path = APP_DIR, wheels: Path | None = None,
          now: datetime | None = None) -> Release:
    """Build `<out_dir>/<release-id>.tar.gz` from `app_dir` and its wheels (downloaded unless `wheels` is given)."""
    if release_id is not None:
        check_release_id(release_id)
    app_dir = Path(app_dir)
    sha, short, dirty = git_state(app_dir)
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    release_id = release_id or default_release_id(now, short, dirty)
    check_release_id(release_id)
    out_dir = Path(out_dir)
    artifact = out_dir / f"{release_id}.tar.gz"
    if artifact.exists():
        raise RoadieError(f"release {release_id} already exists: {artifact}")
    wheels_dir = wheels if wheels is not None else wheelhouse(app_dir / "requirements.txt")
    files = _payload_files(app_dir, wheels_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        payload = work / PAYLOAD_NAME
        members = _write_payload(files, payload)
        digest, size = _digest(payload)
        manifest = Manifest(release_id=release_id, git_sha=sha, dirty=dirty,
                            built_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"), python=PYTHON_VERSION, platform=PLATFORM,
                            payload_sha256=digest, payload_size=size, members=members)
        body = manifest.to_json()
        staged = work / artifact.name
        with open(staged, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tarinfo(MANIFEST_NAME, len(body)), io.BytesIO(body))
            with open(payload, "rb") as data:
                tar.addfile(_tarinfo(PAYLOAD_NAME, size), data)
        if artifact.exists():
            raise RoadieError(f"release {release_id} already exists: {artifact}")
        os.replace(staged, artifact)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Release(artifact, manifest)


# ------------------------------------------------------------------ verification


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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
        raise RoadieError(f"{where}: not a readable release archive (truncated or corrupt): {_one_line(exc)}") from None
    try:
        check_pins(parse_requirements(requirements, require_hashes=True), list(manifest.members))
    except StageError as exc:
        raise RoadieError(f"{where}: {exc}") from None
    return manifest


# ------------------------------------------------------------------ dependency set


@dataclass(frozen=True)
class Dependencies:
    """What a release needs besides its own code: hosts share one environment per `key`."""

    key: str               # sha256 (24 hex) of the requirement lines and wheels, the app's own left out
    app_requirement: str   # the payload's line naming the app (name==version), kept out of the shared env


def dependencies(artifact: Path) -> Dependencies:
    """The dependency set of a verified artifact: two releases with the same key need the same venv.

    The app's wheel changes with every release; everything else (pinned requirements, downloaded
    wheels) usually does not, so a host builds the venv once per key instead of once per release.
    """
    where = Path(artifact).name
    try:
        with gzip.open(artifact, "rb") as gz, tarfile.open(fileobj=gz, mode="r:") as outer:
            payload = outer.extractfile(PAYLOAD_NAME)
            with tarfile.open(fileobj=payload, mode="r:gz") as inner:
                files = {}
                for member in inner:
                    if member.isreg() and (member.name == "requirements.txt" or member.name.startswith("wheels/")):
                        files[member.name] = inner.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError, KeyError) as exc:
        raise RoadieError(f"{where}: not a readable release archive: {_one_line(exc)}") from None
    lines = files.get("requirements.txt", b"").decode("utf-8", "replace").splitlines()
    if APP_MARKER not in lines or lines.index(APP_MARKER) + 1 >= len(lines):
        raise RoadieError(f"{where}: requirements.txt does not name the app after {APP_MARKER!r}")
    after = lines.index(APP_MARKER) + 1
    try:
        requirements = parse_requirements(files["requirements.txt"], require_hashes=True)
        app = parse_requirement_line(lines[after], after + 1, require_hashes=True)
    except StageError as exc:
        raise RoadieError(f"{where}: {exc}") from None
    if app is None:
        raise RoadieError(f"{where}: requirements.txt does not name the app after {APP_MARKER!r}")
    app_requirement = app.pin
    app_wheel_name = f"wheels/{_pin_key(app.name, '')[0]}-{app.version}-py3-none-any.whl"
    # The pins with their hashes: a dependency set is these exact wheels.
    wanted = sorted(r.line() for r in requirements if r.pin != app_requirement)
    digest = hashlib.sha256("\n".join(wanted).encode())
    for file_name in sorted(files):
        if file_name.startswith("wheels/") and file_name != app_wheel_name:
            digest.update(f"\0{file_name}\0{hashlib.sha256(files[file_name]).hexdigest()}".encode())
    return Dependencies(digest.hexdigest()[:24], app_requirement)
