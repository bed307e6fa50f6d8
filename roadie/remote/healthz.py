"""One answer of a stream host's /healthz, read on the host itself (through its nginx).

roadie.deploy.stream_service.health runs this on the host as the deploy user, with roadie.remote.command:
  healthz.py URL
It prints one JSON line: {"status": HTTP status, "body": the JSON body or {}}; an HTTP error status is an
answer too (its body when it is JSON, else {}); no answer at all (refused, timed out, not HTTP) is
{"status": 0, "error": "<exception>: <message>"}. It always exits 0: the controller decides.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 2


def answer(url: str) -> dict:
    """What `url` answered, as described above."""
    try:
        # The URL is the controller's own constant (stream_service.HEALTH_URL), an http:// address on loopback.
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310
            return {"status": response.status, "body": json.loads(response.read() or b"{}")}
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        return {"status": exc.code, "body": body}
    except Exception as exc:  # every failure is an answer the health gate reports
        return {"status": 0, "error": type(exc).__name__ + ": " + str(exc)}


def main(argv: list[str]) -> int:
    print(json.dumps(answer(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
