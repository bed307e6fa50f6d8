"""Write the fence marker on a database host a failover stopped: the role refuses to run while it exists.

roadie.db.fencing.fence_host runs this on the old primary as the deploy user, with roadie.remote.command:
  fence_marker.py PATH MARKER-JSON
It makes PATH's directory when missing and writes MARKER-JSON and a newline to PATH, replacing what was
there. A failure is Python's own error (a traceback, exit status 1).

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import os
import sys


def write(path: str, marker: str) -> None:
    """`marker` and a newline in `path`, its directory made first when missing."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(marker + "\n")


def main(argv: list[str]) -> int:
    write(argv[1], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
