"""Measure the room a stream host has for a release, before anything of it is uploaded.

roadie.deploy.host_space.space runs this on the host as the deploy user (sent with roadie.remote.command):
  --releases, --venvs  the releases directory and the shared venvs directory
  --release            the release id (is it staged already?)
  --key                the dependency set's key, or "" (is its shared venv complete already?)
  --upload             where the artifact is (or was being) uploaded: its size, if it is there
  --base               the release layout's base, holding --releases (optional): also list what `current`
                       and `previous` point at and the complete releases, oldest first (release_listing.py,
                       sent ahead of this), so a deploy needs no second round trip

It prints one JSON object: for the filesystem holding releases (and venvs, when that is a directory)
the bytes an unprivileged user may still write (statvfs f_bavail * f_frsize), the allocation unit and
the device; whether the release is complete already; where its venv would be built (the shared one
when venvs is a writable directory and a key is given, as stage_release.py decides) and whether that
shared venv is complete; the upload's size. It changes nothing. A refusal is one line on stderr, exit 3.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys

from roadie.remote.answer import answer
from roadie.remote.release_listing import COMPLETE_MARK, listing

_RELEASE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", re.ASCII)
_KEY = re.compile(r"[0-9a-f]{8,64}", re.ASCII)


class Refused(Exception):
    """A request this program will not measure: one line."""


def filesystem(path: str) -> dict:
    """Free bytes for an unprivileged writer, allocation unit and device of the filesystem holding `path`."""
    found = os.statvfs(path)
    return {"path": path, "free": found.f_bavail * found.f_frsize, "block": found.f_frsize,
            "device": os.stat(path).st_dev}


def measure(releases: str, venvs: str, release_id: str, key: str, upload: str, base: str = "") -> dict:
    """What the controller needs to know to work out whether a release fits (see the module docstring)."""
    if not _RELEASE_ID.fullmatch(release_id):
        raise Refused(f"bad release id {release_id[:80]!r}")
    if key and not _KEY.fullmatch(key):
        raise Refused(f"bad dependency key {key[:80]!r}")
    if not all(os.path.isabs(p) for p in (releases, venvs) + tuple(p for p in (upload, base) if p)):
        raise Refused("paths must be absolute")
    if not os.path.isdir(releases):
        raise Refused(f"{releases} is not a directory")
    if base and os.path.normpath(os.path.join(base, "releases")) != os.path.normpath(releases):
        raise Refused(f"{releases} is not {base}/releases")
    shared = bool(key) and os.path.isdir(venvs) and os.access(venvs, os.W_OK)
    env = os.path.join(venvs, f"{key}-py{platform.python_version()}")
    size = None
    if upload and os.path.lexists(upload):
        size = os.lstat(upload).st_size
    found = {
        "releases": filesystem(releases),
        "venvs": filesystem(venvs) if os.path.isdir(venvs) else None,
        "staged": os.path.isfile(os.path.join(releases, release_id, COMPLETE_MARK)),
        "venv": "shared" if shared else "own",
        "venv_ready": shared and os.path.isfile(os.path.join(env, COMPLETE_MARK)),
        "upload": size,
    }
    if base:
        found["present"] = listing(base)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The room for a release on this host, in bytes.")
    parser.add_argument("--releases", required=True)
    parser.add_argument("--venvs", required=True)
    parser.add_argument("--release", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--upload", default="")
    parser.add_argument("--base", default="")
    args = parser.parse_args(argv)
    return answer(lambda: json.dumps(measure(args.releases, args.venvs, args.release, args.key, args.upload,
                                             args.base), sort_keys=True), Refused)


if __name__ == "__main__":
    sys.exit(main())
