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

Standard library only: it runs on the host's python3. roadie.deploy.release imports its checks, so the
controller and the host refuse the same things.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from roadie.remote.answer import answer

COMPLETE_MARK = ".roadie-complete"
MANIFEST_NAME = "manifest.json"
PAYLOAD_NAME = "payload.tar.gz"
REQUIREMENTS = "requirements.txt"
WHEELS = "wheels"
# What the host itself writes into a release directory: no payload member may take these names.
RESERVED = frozenset({MANIFEST_NAME, PAYLOAD_NAME, COMPLETE_MARK, "venv"})
MAX_PATH = 1024
CHUNK = 1024 * 1024
# pip reads no configuration file and no PIP_* variable: only the options below decide what it installs.
PIP_OPTIONS = ["--require-hashes", "--only-binary=:all:", "--no-index", "--no-deps"]

_COMPONENT = re.compile(r"[A-Za-z0-9_+@=,~][A-Za-z0-9._+@=,~-]{0,254}", re.ASCII)
SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
RELEASE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", re.ASCII)
_KEY = re.compile(r"[0-9a-f]{8,64}", re.ASCII)
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
_PIN_VERSION = re.compile(r"[0-9][A-Za-z0-9.+!_]*", re.ASCII)
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})", re.ASCII)
_COMMENT = re.compile(r"(^|\s+)#.*$")  # how pip strips comments from a requirements file
_TAR_TYPES = {"l": "symbolic link", "h": "hard link", "c": "character device", "b": "block device",
              "p": "FIFO", "s": "socket"}


class StageError(Exception):
    """A refusal: one line, and the release is not staged."""


def _shown(text: str, limit: int = 80) -> str:
    return ascii(text[:limit] + ("..." if len(text) > limit else ""))


# ------------------------------------------------------------------ checks shared with roadie.deploy.release


@dataclass(frozen=True)
class Requirement:
    """One line of a release's requirements.txt: an exact pin and the sha256 of the wheels it may use."""

    name: str
    version: str
    hashes: tuple[str, ...] = ()

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    def line(self) -> str:
        return " ".join([self.pin, *(f"--hash=sha256:{digest}" for digest in self.hashes)])


def parse_requirement_line(line: str, number: int, *, require_hashes: bool) -> Requirement | None:
    """The Requirement one line pins, None for a blank or comment line; StageError for anything else."""
    text = _COMMENT.sub("", line).strip()
    if not text:
        return None
    if text.startswith("-"):
        raise StageError(f"{REQUIREMENTS} line {number} is an option line ({_shown(text)}): "
                         "only name==version pins with --hash=sha256 are installed")
    pin, *options = text.split()
    name, sep, version = pin.partition("==")
    if not sep or not _NAME.fullmatch(name) or not _PIN_VERSION.fullmatch(version):
        raise StageError(f"{REQUIREMENTS} line {number} is not a name==version pin ({_shown(text)})")
    hashes = []
    for option in options:
        match = _HASH.fullmatch(option)
        if not match:
            raise StageError(f"{REQUIREMENTS} line {number} has {_shown(option)} after {pin}: only "
                             "--hash=sha256:<hex> may follow a requirement")
        hashes.append(match.group(1))
    if require_hashes and not hashes:
        raise StageError(f"{REQUIREMENTS} line {number} ({pin}) has no --hash=sha256 pin")
    return Requirement(name, version, tuple(hashes))


def parse_requirements(data: bytes | str, *, require_hashes: bool) -> list[Requirement]:
    """Every requirement of a requirements file, in order; StageError at the first line pip should not see.

    Only exact pins (`name==version`), each optionally followed by `--hash=sha256:<hex>` options, blank
    lines and comments: no option lines (`-r`, `-c`, `-e`, `--index-url`, `--find-links`, ...), URLs,
    paths, extras, markers, line continuations or environment variables.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise StageError(f"{REQUIREMENTS} is not UTF-8 text") from None
    found: list[Requirement] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(data.splitlines(), 1):
        requirement = parse_requirement_line(line, number, require_hashes=require_hashes)
        if requirement is None:
            continue
        normal = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if normal in seen:
            raise StageError(f"{REQUIREMENTS} line {number} names {requirement.name} again (line {seen[normal]})")
        seen[normal] = number
        found.append(requirement)
    return found


def canonical(requirements: list[Requirement]) -> str:
    """The requirements file pip is given: one generated line per requirement, nothing else."""
    return "".join(r.line() + "\n" for r in requirements)


@dataclass(frozen=True)
class Member:
    """One payload entry: a directory, or a regular file with its size and sha256."""

    path: str
    type: str          # "dir" or "file"
    size: int = 0
    sha256: str = ""

    def as_dict(self) -> dict:
        if self.type == "dir":
            return {"path": self.path, "type": "dir"}
        return {"path": self.path, "type": "file", "size": self.size, "sha256": self.sha256}


def check_member_path(path: object) -> str:
    """`path` if it is a plain relative path that lands inside the release and is not one the host writes."""
    if not isinstance(path, str) or not 0 < len(path) <= MAX_PATH:
        raise StageError(f"member path {_shown(str(path))} is not a string of 1-{MAX_PATH} characters")
    parts = path.split("/")
    if not all(_COMPONENT.fullmatch(part) for part in parts):
        raise StageError(f"member path {_shown(path)} is not relative names of A-Z a-z 0-9 . _ + @ = , ~ - "
                         "(not starting with . or -)")
    if parts[0] in RESERVED:
        raise StageError(f"member path {_shown(path)} is a name the host writes itself")
    return path


def check_members(raw: object) -> list[Member]:
    """The members a manifest lists, sorted by path; StageError at the first malformed entry."""
    if not isinstance(raw, list) or not raw:
        raise StageError("members is not a non-empty list")
    members: dict[str, Member] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise StageError("a member is not an object")
        path = check_member_path(item.get("path"))
        if path in members:
            raise StageError(f"member {path} is listed twice")
        kind = item.get("type")
        if kind == "dir":
            if set(item) != {"path", "type"}:
                raise StageError(f"member {path}: a directory has only path and type")
            members[path] = Member(path, "dir")
        elif kind == "file":
            if set(item) != {"path", "type", "size", "sha256"}:
                raise StageError(f"member {path}: a file has path, type, size and sha256")
            size, digest = item["size"], item["sha256"]
            if type(size) is not int or size < 0:
                raise StageError(f"member {path}: size is not a non-negative integer")
            if not isinstance(digest, str) or not SHA256.fullmatch(digest):
                raise StageError(f"member {path}: sha256 is not a sha256 hex digest")
            members[path] = Member(path, "file", size, digest)
        else:
            raise StageError(f"member {path} has type {_shown(str(kind))}: only file and dir are installed")
    for path in members:
        parent = path.rpartition("/")[0]
        if parent and (parent not in members or members[parent].type != "dir"):
            raise StageError(f"member {path}: its directory {parent} is not listed as a dir")
    return [members[path] for path in sorted(members)]


def check_pins(requirements: list[Requirement], members: list[Member]) -> None:
    """Every requirement's hashes name a wheel the release carries."""
    wheels = {m.sha256 for m in members if m.type == "file" and m.path.startswith(f"{WHEELS}/")
              and m.path.endswith(".whl")}
    for requirement in requirements:
        if not wheels.intersection(requirement.hashes):
            raise StageError(f"{REQUIREMENTS} pins {requirement.pin} to no wheel this release carries")


# ------------------------------------------------------------------ on the host


def _remove(path: Path) -> None:
    """Remove `path` without following a link (a link is removed, not what it points at)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256, size) of a regular file, opened without following a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as data:
        if not stat.S_ISREG(os.fstat(data.fileno()).st_mode):
            raise StageError(f"{path.name} is not a regular file")
        sha, size = hashlib.sha256(), 0
        while chunk := data.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


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


def check_listing(found: list[tuple[str, str]], expected: dict[str, str], what: str) -> None:
    """The archive holds exactly `expected` (name -> "file" or "dir"), each once; no link or device."""
    seen = set()
    for kind, name in found:
        if kind not in ("-", "d"):
            raise StageError(f"{what}: member {_shown(name)} is a {_TAR_TYPES.get(kind, 'special file')}; "
                             "only regular files and directories are installed")
        if name in seen:
            raise StageError(f"{what}: member {_shown(name)} appears twice")
        seen.add(name)
        want = expected.get(name)
        if want is None:
            raise StageError(f"{what}: member {_shown(name)} is not in the verified list")
        if want != ("dir" if kind == "d" else "file"):
            raise StageError(f"{what}: member {name} is not a {want}, as the verified list says")
    missing = sorted(set(expected) - seen)
    if missing:
        raise StageError(f"{what}: no member {missing[0]}, which the verified list holds")


def extract(archive: Path, dest: Path, names: list[str], list_file: Path, what: str) -> None:
    """Extract exactly `names` from `archive` into `dest` with GNU tar: nothing else, nothing twice."""
    list_file.write_bytes(b"".join(name.encode("ascii") + b"\0" for name in names))
    _tar("-xzf", str(archive), "-C", str(dest), "--no-same-owner", "--no-same-permissions", "--no-recursion",
         "--no-wildcards", "--no-unquote", "--keep-old-files", "--null", "--verbatim-files-from",
         "-T", str(list_file), what=what)


def check_tree(tree: Path, members: list[Member]) -> None:
    """`tree` holds exactly the listed directories and regular files, with their sizes and sha256."""
    found: dict[str, str] = {}
    for top, dirs, files in os.walk(tree):  # never into a link: a link is refused below
        for name in sorted(dirs + files):
            path = Path(top, name)
            rel = path.relative_to(tree).as_posix()
            mode = os.lstat(path)
            if stat.S_ISLNK(mode.st_mode):
                raise StageError(f"unpacked release holds a symbolic link, {_shown(rel)}")
            if stat.S_ISDIR(mode.st_mode):
                found[rel] = "dir"
            elif stat.S_ISREG(mode.st_mode):
                if mode.st_nlink != 1:
                    raise StageError(f"unpacked release holds a hard link, {_shown(rel)}")
                found[rel] = "file"
            else:
                raise StageError(f"unpacked release holds {_shown(rel)}, neither a regular file nor a directory")
    expected = {m.path: m.type for m in members}
    extra = sorted(set(found) - set(expected))
    if extra:
        raise StageError(f"unpacked release holds {_shown(extra[0])}, which is not in the verified list")
    missing = sorted(set(expected) - set(found))
    if missing:
        raise StageError(f"unpacked release has no {missing[0]}, which the verified list holds")
    for member in members:
        if found[member.path] != member.type:
            raise StageError(f"unpacked release: {member.path} is not a {member.type}, as the verified list says")
        if member.type == "file" and sha256_file(tree / member.path) != (member.sha256, member.size):
            raise StageError(f"{member.path} does not match its sha256 in the verified list (changed after the build)")


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
        raise StageError(f"bad release id {_shown(str(spec.release_id))}")
    if not isinstance(spec.payload_sha256, str) or not SHA256.fullmatch(spec.payload_sha256):
        raise StageError("payload_sha256 is not a sha256 hex digest")
    if type(spec.payload_size) is not int or spec.payload_size < 0:
        raise StageError("payload_size is not a non-negative integer")
    if spec.key and not _KEY.fullmatch(spec.key):
        raise StageError(f"bad dependency key {_shown(spec.key)}")
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
