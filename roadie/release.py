"""Offline release artifacts of the stream service: app source, every wheel it needs, a manifest.

`<release-id>.tar.gz` holds exactly two files:
  manifest.json     format, release_id, git_sha, dirty, built_at, python, platform,
                    payload_sha256, payload_size
  payload.tar.gz    requirements.txt   app/requirements.txt plus the app itself (streamsvc==<version>)
                    app/gunicorn.conf.py, app/streamsvc/**
                    wheels/*.whl       every dependency, and a wheel of the app made here

On a host (no package index reachable), in /srv/stream/releases/<release-id>/:
  tar -xzf <id>.tar.gz && tar -xzf payload.tar.gz       (after `verify` on the controller)
  python3 -m venv venv && venv/bin/pip install --no-index --find-links wheels -r requirements.txt
  (cd app && ../venv/bin/python -m streamsvc migrate)   (app/ first on sys.path: this release's code)
  venv/bin/gunicorn -c app/gunicorn.conf.py             (the service reads manifest.json for its id)
`fab deploy` shares one venv per dependency set instead (`dependencies`: the requirements and wheels
less the app's own); the app always runs from the release's app/ (gunicorn's `chdir`).

The payload is reproducible: the same app tree and wheels give the same bytes (sorted entries, a
fixed mtime, root ownership without names, normalised modes, gzip without name or time; the app's
wheel is written here the same way, so no build backend or network is needed for it). Wheels
are downloaded on the controller for CPython 3.11 manylinux x86_64 and cached in
.cache/wheels/<hash of requirements.txt and target>/, so a second build does not use the network.
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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from roadie import paths
from roadie.errors import RoadieError

APP_DIR = paths.ROOT / "app"
WHEEL_CACHE = paths.ROOT / ".cache" / "wheels"
PYTHON_VERSION = "3.11"
PLATFORM = "manylinux2014_x86_64"
PIP_TARGET = ["--only-binary=:all:", "--platform", PLATFORM, "--python-version", PYTHON_VERSION,
              "--implementation", "cp", "--abi", "cp311"]
FORMAT = 1
FIXED_MTIME = 315532800  # 1980-01-01T00:00:00Z, as in wheels: no build time leaks into the payload
MANIFEST_NAME = "manifest.json"
PAYLOAD_NAME = "payload.tar.gz"
MAX_MANIFEST = 64 * 1024
CHUNK = 1024 * 1024
# App files the payload carries: the package and gunicorn's settings beside it.
APP_FILES = ["gunicorn.conf.py"]
APP_PACKAGE = "streamsvc"
REQUIRED_IN_PAYLOAD = ["requirements.txt", "app/gunicorn.conf.py", "app/streamsvc/__init__.py"]
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# The payload's requirements.txt ends with this line and the app's own requirement (name==version).
APP_MARKER = "# The service itself: its wheel is made by roadie.release, not downloaded."
_DIST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*", re.ASCII)

DEFAULT_ID = re.compile(r"[0-9]{14}-[0-9a-f]{7,40}(-dirty)?", re.ASCII)
USER_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", re.ASCII)
_SHA1 = re.compile(r"[0-9a-f]{40}", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


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
    format: int = FORMAT

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()


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


def wheelhouse(requirements: Path, cache_root: Path = WHEEL_CACHE) -> Path:
    """A directory with a wheel of every requirement for the hosts' Python, downloaded once and cached."""
    key = hashlib.sha256(requirements.read_bytes() + "\0".join(PIP_TARGET).encode()).hexdigest()[:16]
    target = cache_root / key
    if (target / ".complete").is_file():
        return target
    if target.exists():  # left by an interrupted run that predates the atomic rename
        shutil.rmtree(target)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))
    try:
        command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "-q",
                   *PIP_TARGET, "-r", str(requirements), "-d", str(staging)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("ERROR")]
            detail = lines[-1] if lines else f"exit status {result.returncode}"
            raise RoadieError(f"pip download of {requirements.name} failed: {detail}")
        wheels = sorted(p.name for p in staging.glob("*.whl"))
        if not wheels:
            raise RoadieError(f"pip download of {requirements.name} gave no wheels")
        (staging / ".complete").write_text("\n".join(wheels) + "\n")
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


def _payload_files(app_dir: Path, wheels_dir: Path) -> dict[str, Path | bytes]:
    """Archive name -> source file or content, for everything the payload carries."""
    requirements = app_dir / "requirements.txt"
    if not requirements.is_file():
        raise RoadieError(f"{requirements} is missing")
    project = _project(app_dir)
    files: dict[str, Path | bytes] = {
        "requirements.txt": requirements.read_bytes().rstrip(b"\n") + (
            f"\n\n{APP_MARKER}\n{project['name']}=={project['version']}\n").encode()}
    for name in APP_FILES:
        if not (app_dir / name).is_file():
            raise RoadieError(f"{app_dir / name} is missing")
        files[f"app/{name}"] = app_dir / name
    package = _package_files(app_dir)
    files.update({f"app/{name}": path for name, path in package.items()})
    if not wheels_dir.is_dir():
        raise RoadieError(f"wheel directory {wheels_dir} does not exist")
    for wheel in sorted(wheels_dir.glob("*.whl")):
        files[f"wheels/{wheel.name}"] = wheel
    wheel_name, wheel_bytes = app_wheel(app_dir, package)
    files[f"wheels/{wheel_name}"] = wheel_bytes
    return files


def _write_payload(files: dict[str, Path | bytes], out: Path) -> None:
    directories = {"wheels"}
    for name in files:
        directories.update(str(parent) for parent in PurePosixPath(name).parents if str(parent) != ".")
    entries = sorted([(d, None) for d in directories] + list(files.items()))
    with open(out, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, source in entries:
            if source is None:
                tar.addfile(_tarinfo(name, mode=0o755, directory=True))
                continue
            if isinstance(source, bytes):
                tar.addfile(_tarinfo(name, len(source)), io.BytesIO(source))
                continue
            mode = 0o755 if source.stat().st_mode & 0o111 else 0o644
            with open(source, "rb") as data:
                tar.addfile(_tarinfo(name, os.fstat(data.fileno()).st_size, mode), data)


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
        _write_payload(files, payload)
        digest, size = _digest(payload)
        manifest = Manifest(release_id=release_id, git_sha=sha, dirty=dirty,
                            built_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"), python=PYTHON_VERSION, platform=PLATFORM,
                            payload_sha256=digest, payload_size=size)
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
             "platform": str, "payload_sha256": str, "payload_size": int}
    for key, kind in types.items():
        if key not in raw:
            raise RoadieError(f"{where}: manifest.json has no {key}")
        value = raw[key]
        if type(value) is not kind:
            wanted = {int: "an integer", str: "a string", bool: "true or false"}[kind]
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
    if not _SHA256.fullmatch(raw["payload_sha256"]):
        raise RoadieError(f"{where}: manifest.json payload_sha256 is not a sha256 hex digest")
    if raw["payload_size"] < 0:
        raise RoadieError(f"{where}: manifest.json payload_size is negative")
    return Manifest(**{key: raw[key] for key in types})


def _check_payload_members(tar: tarfile.TarFile, where: str) -> None:
    names = set()
    for member in tar:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or "\\" in member.name:
            raise RoadieError(f"{where}: payload entry {member.name!r} would land outside the release directory")
        if not (member.isreg() or member.isdir()):
            raise RoadieError(f"{where}: payload entry {member.name!r} is not a regular file or directory")
        names.add(path.as_posix())
    missing = [name for name in REQUIRED_IN_PAYLOAD if name not in names]
    if missing:
        raise RoadieError(f"{where}: payload has no {missing[0]}")


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
                    _check_payload_members(inner, where)
            while gz.read(CHUNK):  # to the end: the gzip trailer (CRC, length) of the whole artifact
                pass
    except RoadieError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise RoadieError(f"{where}: not a readable release archive (truncated or corrupt): {_one_line(exc)}") from None
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
    app_requirement = lines[lines.index(APP_MARKER) + 1].strip()
    name, _, version = app_requirement.partition("==")
    app_wheel_name = f"wheels/{re.sub(r'[-_.]+', '_', name).lower()}-{version}-py3-none-any.whl"
    wanted = sorted({line.split("#", 1)[0].strip() for line in lines} - {"", app_requirement})
    digest = hashlib.sha256("\n".join(wanted).encode())
    for file_name in sorted(files):
        if file_name.startswith("wheels/") and file_name != app_wheel_name:
            digest.update(f"\0{file_name}\0{hashlib.sha256(files[file_name]).hexdigest()}".encode())
    return Dependencies(digest.hexdigest()[:24], app_requirement)
