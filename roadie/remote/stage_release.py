"""Stage a release on a stream host: unpack only what the controller verified, check it, then install it.

roadie.deploy.stream_host.stage runs this on the host as the deploy user. It sends the program with
roadie.remote.command and writes one JSON line to its stdin:
  artifact         the uploaded <release-id>.tar.gz (removed whatever happens)
  releases, venvs  the releases directory and the shared venvs directory
  manifest         manifest.json as the controller verified it (text): release_id, payload_sha256,
                   payload_size and members (every payload file and directory; files with size and sha256)
  key              the dependency set's key (a shared venv), or "" for a venv of the release's own
  app_requirement  name==version of the app, which a shared venv leaves out

Nothing the tarball says is trusted. GNU tar lists each archive first (names and types): it must hold
exactly the expected members, each once, regular files and directories only. Only those names are
extracted (an explicit list, no recursion, no wildcards, nothing overwritten, no owners or modes from
the archive) into a private directory. The tree left there must be exactly the listed files and
directories with their sha256, no links; requirements.txt must hold only name==version lines pinned by
sha256 to the release's own wheels. Only then is the tree moved to releases/<id>, and pip installs in
hash-checking mode from that release's wheels and nothing else. Any failure removes what this run made
and prints one line on stderr (exit status 3).

Standard library only: it runs on the host's python3. Its checks are release_checks.py's, sent ahead of
it; roadie.deploy.release imports the same ones, so the controller and the host refuse the same things.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from roadie.remote.answer import answer
from roadie.remote.release_checks import (
    COMPLETE_MARK,
    MANIFEST_NAME,
    PAYLOAD_NAME,
    RELEASE_ID,
    REQUIREMENTS,
    SHA256,
    WHEELS,
    Member,
    Requirement,
    StageError,
    canonical,
    check_listing,
    check_members,
    check_pins,
    check_tree,
    parse_requirement_line,
    parse_requirements,
    sha256_file,
    shown,
)

# pip reads no configuration file and no PIP_* variable: only the options below decide what it installs.
PIP_OPTIONS = ["--require-hashes", "--only-binary=:all:", "--no-index", "--no-deps"]
_KEY = re.compile(r"[0-9a-f]{8,64}", re.ASCII)


def _remove(path: Path) -> None:
    """Remove `path` without following a link (a link is removed, not what it points at)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _tar(*args: str, what: str) -> str:
    result = subprocess.run(["tar", *args], capture_output=True, check=False, env={**os.environ, "LC_ALL": "C"})
    if result.returncode != 0:
        lines = [x.strip() for x in result.stderr.decode("ascii", "replace").splitlines() if x.strip()]
        raise StageError(f"{what}: tar failed: {lines[0] if lines else f'exit status {result.returncode}'}")
    return result.stdout.decode("ascii", "replace")


def listing(archive: Path, what: str) -> list[tuple[str, str]]:
    """(type letter, name) of every member GNU tar sees in a .tar.gz, in archive order.

    Two listings, names alone and long (whose first letter is the type: - d l h c b p ...); names are
    escaped (LC_ALL=C, --quoting-style=escape), so every member is one line of each.
    """
    names = _tar("-tzf", str(archive), "--quoting-style=escape", what=what).splitlines()
    long = _tar("-tvzf", str(archive), "--quoting-style=escape", "--numeric-owner", what=what).splitlines()
    if len(names) != len(long):
        raise StageError(f"{what}: tar lists {len(names)} names but {len(long)} entries")
    found = []
    for name, entry in zip(names, long, strict=True):
        kind = entry[:1]
        if kind == "d" and name.endswith("/"):
            name = name[:-1]
        found.append((kind, name))
    return found


def extract(archive: Path, dest: Path, names: list[str], list_file: Path, what: str) -> None:
    """Extract exactly `names` from `archive` into `dest` with GNU tar: nothing else, nothing twice."""
    list_file.write_bytes(b"".join(name.encode("ascii") + b"\0" for name in names))
    _tar("-xzf", str(archive), "-C", str(dest), "--no-same-owner", "--no-same-permissions", "--no-recursion",
         "--no-wildcards", "--no-unquote", "--keep-old-files", "--null", "--verbatim-files-from",
         "-T", str(list_file), what=what)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def pip_install(python: Path, requirements: Path, wheels: Path) -> None:
    """Install `requirements` into the venv of `python` from `wheels` alone, every wheel checked by hash."""
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
               "--no-cache-dir", *PIP_OPTIONS, "--find-links", str(wheels), "-r", str(requirements)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=_clean_env())
    if result.returncode != 0:
        lines = [x.strip() for x in (result.stderr + result.stdout).splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("ERROR:")] or lines or [f"exit status {result.returncode}"]
        raise StageError(f"pip refused the install: {errors[0][:300]}")


def _python(*args: str, what: str) -> None:
    result = subprocess.run(list(args), capture_output=True, text=True, check=False, env=_clean_env())
    if result.returncode != 0:
        lines = [x.strip() for x in (result.stderr + result.stdout).splitlines() if x.strip()]
        raise StageError(f"{what} failed: {lines[-1][:300] if lines else f'exit status {result.returncode}'}")


def _venv(path: Path, requirements: list[Requirement], wheels: Path) -> None:
    """A new venv at `path` with exactly `requirements` installed (their canonical file kept inside)."""
    _python(sys.executable, "-m", "venv", str(path), what=f"creating the venv {path.name}")
    (path / REQUIREMENTS).write_text(canonical(requirements))
    pip_install(path / "bin" / "python", path / REQUIREMENTS, wheels)


@dataclass
class Spec:
    """What the controller sent, checked."""

    artifact: Path
    releases: Path
    venvs: Path
    manifest_text: str
    release_id: str
    payload_sha256: str
    payload_size: int
    members: list[Member]
    key: str
    app_requirement: str


def read_spec(line: str) -> Spec:
    try:
        raw = json.loads(line)
        manifest = json.loads(raw["manifest"])
        spec = Spec(Path(raw["artifact"]), Path(raw["releases"]), Path(raw["venvs"]), raw["manifest"],
                    manifest["release_id"], manifest["payload_sha256"], manifest["payload_size"],
                    check_members(manifest["members"]), raw["key"], raw["app_requirement"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StageError(f"unusable staging request: {type(exc).__name__}: {exc}") from None
    if not all(p.is_absolute() for p in (spec.artifact, spec.releases, spec.venvs)):
        raise StageError("unusable staging request: paths must be absolute")
    if not isinstance(spec.release_id, str) or not RELEASE_ID.fullmatch(spec.release_id):
        raise StageError(f"bad release id {shown(str(spec.release_id))}")
    if not isinstance(spec.payload_sha256, str) or not SHA256.fullmatch(spec.payload_sha256):
        raise StageError("payload_sha256 is not a sha256 hex digest")
    if type(spec.payload_size) is not int or spec.payload_size < 0:
        raise StageError("payload_size is not a non-negative integer")
    if spec.key and not _KEY.fullmatch(spec.key):
        raise StageError(f"bad dependency key {shown(spec.key)}")
    if spec.app_requirement and parse_requirement_line(spec.app_requirement, 1, require_hashes=False) is None:
        raise StageError("app_requirement is empty")
    return spec


def unpack(spec: Spec, work: Path) -> Path:
    """The verified payload tree, unpacked in `work`; StageError if the artifact is anything else."""
    where = spec.artifact.name
    check_listing(listing(spec.artifact, where), {MANIFEST_NAME: "file", PAYLOAD_NAME: "file"}, where)
    extract(spec.artifact, work, [PAYLOAD_NAME], work / ".outer-members", where)
    payload = work / PAYLOAD_NAME
    if os.lstat(payload).st_nlink != 1:
        raise StageError(f"{where}: {PAYLOAD_NAME} is a hard link")
    digest, size = sha256_file(payload)
    if (digest, size) != (spec.payload_sha256, spec.payload_size):
        raise StageError(f"{where}: payload sha256 or size does not match the verified manifest")
    what = f"{where}: {PAYLOAD_NAME}"
    check_listing(listing(payload, what), {m.path: m.type for m in spec.members}, what)
    tree = work / "tree"
    tree.mkdir()
    extract(payload, tree, [m.path for m in spec.members], work / ".members", what)
    check_tree(tree, spec.members)
    return tree


def stage(spec: Spec) -> str:
    """Unpack, check and install one release; what happened, in a few words."""
    target = spec.releases / spec.release_id
    if (target / COMPLETE_MARK).is_file():
        spec.artifact.unlink(missing_ok=True)
        return f"release {spec.release_id} already staged"
    work = new_env = None
    try:
        _remove(target)  # left by an interrupted run: no completion mark
        for stale in spec.releases.glob(f".{spec.release_id}.staging-*"):
            _remove(stale)
        work = Path(tempfile.mkdtemp(prefix=f".{spec.release_id}.staging-", dir=spec.releases))
        tree = unpack(spec, work)
        requirements = parse_requirements((tree / REQUIREMENTS).read_bytes(), require_hashes=True)
        check_pins(requirements, spec.members)
        shared = [r for r in requirements if r.pin != spec.app_requirement]
        if spec.app_requirement and len(shared) == len(requirements):
            raise StageError(f"{REQUIREMENTS} does not name the app ({spec.app_requirement})")
        (tree / MANIFEST_NAME).write_text(spec.manifest_text)
        # Moved before any venv exists: a venv's scripts name their interpreter by absolute path, so a
        # venv is built where it stays. The completion marks come last; without one, it is rebuilt.
        os.rename(tree, target)
        wheels = target / WHEELS
        if spec.key and spec.venvs.is_dir() and os.access(spec.venvs, os.W_OK):
            env = spec.venvs / f"{spec.key}-py{platform.python_version()}"
            if not (env / COMPLETE_MARK).is_file():
                _remove(env)
                new_env = env
                _venv(env, shared, wheels)
                (env / COMPLETE_MARK).touch()
            elif (env / REQUIREMENTS).read_text() != canonical(shared):
                raise StageError(f"shared venv {env.name} holds other requirements than this release's")
            os.symlink(f"../../{spec.venvs.name}/{env.name}", target / "venv")
            # The app is imported from its source: compile it now, the service may not write into releases.
            _python(str(env / "bin" / "python"), "-m", "compileall", "-q", str(target / "app"),
                    what="compiling the app")
        else:
            _venv(target / "venv", requirements, wheels)
        (target / COMPLETE_MARK).touch()
        return f"staged {spec.release_id}"
    except BaseException:
        _remove(target)
        if new_env is not None and not (new_env / COMPLETE_MARK).is_file():
            _remove(new_env)
        raise
    finally:
        if work is not None:
            _remove(work)
        spec.artifact.unlink(missing_ok=True)


def main() -> int:
    return answer(lambda: stage(read_spec(sys.stdin.readline())), StageError)


if __name__ == "__main__":
    sys.exit(main())
