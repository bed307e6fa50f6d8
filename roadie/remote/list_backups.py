"""The complete base backups on a database host, oldest first, from what pg-base-backup recorded.

roadie.db.backups.list_backups runs this on the host as postgres (sudo -u postgres), with roadie.remote.command:
  list_backups.py BASE_DIR      (the postgresql role's base backup directory)
A backup is a directory whose whole name is a UTC timestamp (20260102T023000Z) holding a readable
roadie-backup.json; any other entry, or one whose record is missing or does not parse, is skipped.
It prints one JSON list, each backup as {"name", "size_bytes", "started_at", "finished_at", "start_wal",
"age_s" (seconds since it finished, by this host's clock), "sha256", "has_reference"
(roadie-reference.json is there)}. It changes nothing.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import sys
import time

NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z")
RECORD = "roadie-backup.json"
REFERENCE = "roadie-reference.json"


def backups(base: str) -> list[dict]:
    """Every complete backup under `base`, in name order (their names are timestamps)."""
    out = []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name)
        if not NAME.fullmatch(name) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, RECORD)) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        finished = calendar.timegm(time.strptime(meta["finished_at"], "%Y-%m-%dT%H:%M:%SZ"))
        out.append({"name": name, "size_bytes": meta.get("size_bytes", 0), "started_at": meta["started_at"],
                    "finished_at": meta["finished_at"], "start_wal": meta["start_wal"],
                    "age_s": round(time.time() - finished, 1), "sha256": meta.get("sha256", {}),
                    "has_reference": os.path.isfile(os.path.join(path, REFERENCE))})
    return out


def main(argv: list[str]) -> int:
    print(json.dumps(backups(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
