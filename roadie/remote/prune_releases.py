"""Remove old releases from a stream host, then the shared venvs no release links to any more.

roadie.deploy.stream_host.prune runs this on the host as the deploy user, with roadie.remote.command:
  prune_releases.py BASE RELEASE...
BASE is /srv/stream (releases/ and venvs/ under it); each RELEASE is a directory name under releases/
that the controller chose (complete, neither current nor previous). After removing them it removes every
directory in venvs/ that no remaining release's `venv` link names. It prints nothing; a failure is
Python's own error (a traceback, exit status 1).

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import os
import shutil
import sys


def prune(base: str, doomed: list[str]) -> None:
    """Remove the releases `doomed`, then the venvs in `base`/venvs no release in `base`/releases uses."""
    venvs, releases = os.path.join(base, "venvs"), os.path.join(base, "releases")
    for name in doomed:
        shutil.rmtree(os.path.join(releases, name))
    used = set()
    for entry in os.listdir(releases):
        link = os.path.join(releases, entry, "venv")
        if os.path.islink(link):
            used.add(os.path.basename(os.readlink(link)))
    for name in sorted(os.listdir(venvs)) if os.path.isdir(venvs) else []:
        if name not in used:
            shutil.rmtree(os.path.join(venvs, name))


def main(argv: list[str]) -> int:
    prune(argv[1], argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
