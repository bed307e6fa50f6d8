"""The releases on a stream host: what `current` and `previous` point at, and the complete ones kept.

Not a program: remote.command sends this text ahead of the programs that import it (list_releases.py,
and free_space.py, whose deploy measure lists the releases in the same round trip). `listing(BASE)`
(BASE: /srv/stream, holding releases/, current and previous) is {"current": name or None, "previous":
name or None, "kept": [names]}, where a link's name is the last part of its target and "kept" lists the
releases holding the completion mark (.roadie-complete), oldest mark first. It changes nothing.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import os

COMPLETE_MARK = ".roadie-complete"   # as stage_release.py writes it


def target(base: str, name: str) -> str | None:
    """The last part of what the link `base`/`name` points at; None when it is not a readable link."""
    try:
        return os.path.basename(os.readlink(os.path.join(base, name)))
    except OSError:
        return None


def listing(base: str) -> dict:
    """current, previous and the complete releases under `base`, oldest first."""
    releases = os.path.join(base, "releases")
    kept = []
    if os.path.isdir(releases):
        for entry in os.listdir(releases):
            mark = os.path.join(releases, entry, COMPLETE_MARK)
            if os.path.isfile(mark):
                kept.append((os.stat(mark).st_mtime, entry))
    return {"current": target(base, "current"), "previous": target(base, "previous"),
            "kept": [entry for _, entry in sorted(kept)]}
