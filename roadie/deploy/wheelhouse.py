"""The wheels a release carries: the controller's wheelhouse, and a release's dependency set.

Wheels are downloaded on the controller for CPython 3.11 manylinux x86_64 and cached in
.cache/wheels/<hash of requirements.txt and target>/, so a second build does not use the network; the
cache records each wheel's sha256 when it is downloaded and a build refuses a cache that changed since.
The build refuses a download that brings a wheel no line pins: hosts install with --no-deps, so
app/requirements.txt must be the whole closure.

A host builds one venv per dependency set (`dependencies`: the pinned requirements and wheels less the
app's own), shared by the releases that need the same one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from roadie.core import paths
from roadie.core.errors import RoadieError
from roadie.deploy.release import APP_MARKER, PAYLOAD_NAME, PLATFORM, PYTHON_VERSION, file_sha256, one_line
from roadie.remote.release_checks import Requirement, StageError, canonical, parse_requirement_line, parse_requirements

WHEEL_CACHE = paths.ROOT / ".cache" / "wheels"
PIP_TARGET = ["--only-binary=:all:", "--platform", PLATFORM, "--python-version", PYTHON_VERSION,
              "--implementation", "cp", "--abi", "cp311"]


def source_requirements(requirements: Path) -> list[Requirement]:
    """The pins of app/requirements.txt; RoadieError for an option line, a URL, a path or a loose pin."""
    try:
        return parse_requirements(requirements.read_bytes(), require_hashes=False)
    except StageError as exc:
        raise RoadieError(f"{requirements}: {exc}") from None
    except OSError as exc:
        raise RoadieError(f"{requirements}: {one_line(exc)}") from None


def pin_key(name: str, version: str) -> tuple[str, str]:
    """How a wheel file name spells a distribution and version (PEP 427 escaping, lower case)."""
    return re.sub(r"[-_.]+", "_", name).lower(), version.replace("-", "_").lower()


def wheel_key(file_name: str) -> tuple[str, str] | None:
    """(name, version) of a wheel file name `name-version[-build]-python-abi-platform.whl`, else None."""
    parts = file_name.removesuffix(".whl").split("-")
    if not file_name.endswith(".whl") or len(parts) not in (5, 6):
        return None
    return pin_key(parts[0], parts[1])


def _recorded_wheels(target: Path) -> dict[str, str]:
    """Wheel name -> sha256 recorded at download; RoadieError if the cache changed since."""
    try:
        recorded = json.loads((target / ".complete").read_text())["wheels"]
    except (ValueError, KeyError, TypeError):
        # Written before the sha256 were recorded: record them now, as the download would have.
        recorded = {p.name: file_sha256(p)[0] for p in sorted(target.glob("*.whl"))}
        (target / ".complete").write_text(json.dumps({"wheels": recorded}, indent=2, sort_keys=True) + "\n")
    present = {p.name for p in target.glob("*.whl")}
    if not isinstance(recorded, dict) or present != set(recorded):
        raise RoadieError(f"wheel cache {target} does not hold the wheels it recorded; remove it and build again")
    for name, digest in sorted(recorded.items()):
        if file_sha256(target / name)[0] != digest:
            raise RoadieError(f"wheel cache {target}: {name} changed since its download; remove it and build again")
    return recorded


def wheelhouse(requirements: Path, cache_root: Path = WHEEL_CACHE) -> Path:
    """A directory with a wheel of every requirement for the hosts' Python, downloaded once and cached.

    Only exact pins are downloaded (pip in hash-checking mode where app/requirements.txt pins hashes),
    and the download must bring no wheel the file does not pin: hosts install with --no-deps.
    """
    pins = source_requirements(requirements)
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
        pinned = {pin_key(r.name, r.version) for r in pins}
        loose = [name for name in wheels if wheel_key(name) not in pinned]
        if loose:
            raise RoadieError(f"pip download of {requirements.name} brought {loose[0]}, which no line pins; "
                              "hosts install with --no-deps: pin every dependency")
        recorded = {name: file_sha256(staging / name)[0] for name in wheels}
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
        raise RoadieError(f"{where}: not a readable release archive: {one_line(exc)}") from None
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
    app_wheel_name = f"wheels/{pin_key(app.name, '')[0]}-{app.version}-py3-none-any.whl"
    # The pins with their hashes: a dependency set is these exact wheels.
    wanted = sorted(r.line() for r in requirements if r.pin != app_requirement)
    digest = hashlib.sha256("\n".join(wanted).encode())
    for file_name in sorted(files):
        if file_name.startswith("wheels/") and file_name != app_wheel_name:
            digest.update(f"\0{file_name}\0{hashlib.sha256(files[file_name]).hexdigest()}".encode())
    return Dependencies(digest.hexdigest()[:24], app_requirement)
