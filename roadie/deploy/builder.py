"""Build a release artifact (release.py says what one holds) offline, from the working tree.

The payload is reproducible: the same app tree and wheels give the same bytes (sorted entries, a
fixed mtime, root ownership without names, normalised modes, gzip without name or time; the app's
wheel is written here the same way, so no build backend or network is needed for it). The other
wheels come from the controller's wheelhouse (wheelhouse.py), each pinned by its sha256 in the payload's
requirements.txt. The release is named after the git commit of the app (and whether it is dirty).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import tomllib
import zipfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from roadie.core import paths
from roadie.core.errors import RoadieError
from roadie.deploy.release import (
    APP_MARKER,
    MANIFEST_NAME,
    PAYLOAD_NAME,
    PLATFORM,
    PYTHON_VERSION,
    Manifest,
    Release,
    check_release_id,
    default_release_id,
    file_sha256,
    one_line,
)
from roadie.deploy.wheelhouse import pin_key, source_requirements, wheel_key, wheelhouse
from roadie.remote.release_checks import Member, Requirement, StageError, canonical, check_members

APP_DIR = paths.ROOT / "app"
FIXED_MTIME = 315532800  # 1980-01-01T00:00:00Z, as in wheels: no build time leaks into the payload
# App files the payload carries: the package and gunicorn's settings beside it.
APP_FILES = ["gunicorn.conf.py"]
APP_PACKAGE = "streamsvc"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
PINS_HEADER = ("# Written by roadie.release: exact pins, each to the sha256 of its wheel in wheels/. Hosts install\n"
               "# these and nothing else (pip --require-hashes --only-binary=:all: --no-index --no-deps).\n")
_DIST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*", re.ASCII)


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
        raise RoadieError(f"{app_dir / 'pyproject.toml'}: no readable [project] table ({one_line(exc)})") from None
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
        key = wheel_key(name.removeprefix("wheels/")) if name.startswith("wheels/") else None
        if key:
            digests.setdefault(key, []).append(hashlib.sha256(data).hexdigest())
    app_name = pin_key(project["name"], project["version"])[0]
    pinned = []
    for requirement in source_requirements(requirements):
        if pin_key(requirement.name, "")[0] == app_name:
            raise RoadieError(f"{requirements} names the app itself ({requirement.pin}); the build adds it")
        found = sorted(digests.get(pin_key(requirement.name, requirement.version), []))
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
        digest, size = file_sha256(payload)
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
