"""The releases on a stream host: what `current` and `previous` point at, and the complete ones kept.

roadie.deploy.stream_host.releases runs this on the host as the deploy user, with roadie.remote.command:
  list_releases.py BASE      (BASE: /srv/stream, holding releases/, current and previous)
It prints one JSON line: {"current": name or null, "previous": name or null, "kept": [names]}, where a
link's name is the last part of its target and "kept" lists the releases holding the completion mark
(.roadie-complete), oldest mark first (release_listing.py, sent ahead of this). It changes nothing.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import json
import sys

from roadie.remote.release_listing import listing


def main(argv: list[str]) -> int:
    print(json.dumps(listing(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
