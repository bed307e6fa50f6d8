"""What a release may hold, checked the same way on the controller and on the stream host.

Not a program: remote.command sends this text ahead of stage_release.py, which imports it, and
roadie.deploy.release (verify) and its builder import it on the controller, so both sides refuse the
same things. The checks: requirement files of exact pins with sha256 (`parse_requirements`), the members
a manifest lists (`check_members`: plain relative paths, regular files with size and sha256 and their
directories, no name the host writes itself), pins that name wheels the release carries (`check_pins`),
and an archive's listing or an unpacked tree against those members (`check_listing`, `check_tree`:
exactly the listed entries, no link or device, each file with its sha256).

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARK = ".roadie-complete"
MANIFEST_NAME = "manifest.json"
PAYLOAD_NAME = "payload.tar.gz"
REQUIREMENTS = "requirements.txt"
WHEELS = "wheels"
# What the host itself writes into a release directory: no payload member may take these names.
RESERVED = frozenset({MANIFEST_NAME, PAYLOAD_NAME, COMPLETE_MARK, "venv"})
MAX_PATH = 1024
CHUNK = 1024 * 1024

_COMPONENT = re.compile(r"[A-Za-z0-9_+@=,~][A-Za-z0-9._+@=,~-]{0,254}", re.ASCII)
SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
RELEASE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", re.ASCII)
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", re.ASCII)
_PIN_VERSION = re.compile(r"[0-9][A-Za-z0-9.+!_]*", re.ASCII)
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})", re.ASCII)
_COMMENT = re.compile(r"(^|\s+)#.*$")  # how pip strips comments from a requirements file
_TAR_TYPES = {"l": "symbolic link", "h": "hard link", "c": "character device", "b": "block device",
              "p": "FIFO", "s": "socket"}


class StageError(Exception):
    """A refusal: one line, and the release is not staged."""


def shown(text: str, limit: int = 80) -> str:
    """`text` for a refusal line: ASCII, cut at `limit` characters."""
    return ascii(text[:limit] + ("..." if len(text) > limit else ""))


# ------------------------------------------------------------------ requirements


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
        raise StageError(f"{REQUIREMENTS} line {number} is an option line ({shown(text)}): "
                         "only name==version pins with --hash=sha256 are installed")
    pin, *options = text.split()
    name, sep, version = pin.partition("==")
    if not sep or not _NAME.fullmatch(name) or not _PIN_VERSION.fullmatch(version):
        raise StageError(f"{REQUIREMENTS} line {number} is not a name==version pin ({shown(text)})")
    hashes = []
    for option in options:
        match = _HASH.fullmatch(option)
        if not match:
            raise StageError(f"{REQUIREMENTS} line {number} has {shown(option)} after {pin}: only "
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


# ------------------------------------------------------------------ members


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
        raise StageError(f"member path {shown(str(path))} is not a string of 1-{MAX_PATH} characters")
    parts = path.split("/")
    if not all(_COMPONENT.fullmatch(part) for part in parts):
        raise StageError(f"member path {shown(path)} is not relative names of A-Z a-z 0-9 . _ + @ = , ~ - "
                         "(not starting with . or -)")
    if parts[0] in RESERVED:
        raise StageError(f"member path {shown(path)} is a name the host writes itself")
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
            raise StageError(f"member {path} has type {shown(str(kind))}: only file and dir are installed")
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


# ------------------------------------------------------------------ archives and trees


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


def check_listing(found: list[tuple[str, str]], expected: dict[str, str], what: str) -> None:
    """The archive holds exactly `expected` (name -> "file" or "dir"), each once; no link or device."""
    seen = set()
    for kind, name in found:
        if kind not in ("-", "d"):
            raise StageError(f"{what}: member {shown(name)} is a {_TAR_TYPES.get(kind, 'special file')}; "
                             "only regular files and directories are installed")
        if name in seen:
            raise StageError(f"{what}: member {shown(name)} appears twice")
        seen.add(name)
        want = expected.get(name)
        if want is None:
            raise StageError(f"{what}: member {shown(name)} is not in the verified list")
        if want != ("dir" if kind == "d" else "file"):
            raise StageError(f"{what}: member {name} is not a {want}, as the verified list says")
    missing = sorted(set(expected) - seen)
    if missing:
        raise StageError(f"{what}: no member {missing[0]}, which the verified list holds")


def check_tree(tree: Path, members: list[Member]) -> None:
    """`tree` holds exactly the listed directories and regular files, with their sizes and sha256."""
    found: dict[str, str] = {}
    for top, dirs, files in os.walk(tree):  # never into a link: a link is refused below
        for name in sorted(dirs + files):
            path = Path(top, name)
            rel = path.relative_to(tree).as_posix()
            mode = os.lstat(path)
            if stat.S_ISLNK(mode.st_mode):
                raise StageError(f"unpacked release holds a symbolic link, {shown(rel)}")
            if stat.S_ISDIR(mode.st_mode):
                found[rel] = "dir"
            elif stat.S_ISREG(mode.st_mode):
                if mode.st_nlink != 1:
                    raise StageError(f"unpacked release holds a hard link, {shown(rel)}")
                found[rel] = "file"
            else:
                raise StageError(f"unpacked release holds {shown(rel)}, neither a regular file nor a directory")
    expected = {m.path: m.type for m in members}
    extra = sorted(set(found) - set(expected))
    if extra:
        raise StageError(f"unpacked release holds {shown(extra[0])}, which is not in the verified list")
    missing = sorted(set(expected) - set(found))
    if missing:
        raise StageError(f"unpacked release has no {missing[0]}, which the verified list holds")
    for member in members:
        if found[member.path] != member.type:
            raise StageError(f"unpacked release: {member.path} is not a {member.type}, as the verified list says")
        if member.type == "file" and sha256_file(tree / member.path) != (member.sha256, member.size):
            raise StageError(f"{member.path} does not match its sha256 in the verified list (changed after the build)")
