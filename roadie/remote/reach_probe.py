"""The network policy's probe: which TCP connections a host can open, run on that host (or the controller).

tests/lab/test_network_policy.py runs this on every lab host as the deploy user (with roadie.core.ssh) and on
the controller:  reach_probe.py TIMEOUT TARGETS-JSON
TARGETS is a JSON list of [address, port]. It prints one JSON list of outcomes in the same order: "open"
(connected), "refused" (RST), "timeout" (dropped) or "error:<errno name>". One thread per target, so the
whole probe takes about one TIMEOUT however many targets are dropped. It sends nothing but the handshake.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading


def outcome(address: str, port: int, timeout: float) -> str:
    """What one TCP connection to (address, port) did within `timeout` seconds."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((address, port))
        return "open"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return "error:" + (errno.errorcode.get(exc.errno) or str(exc.errno))
    finally:
        s.close()


def probe(targets: list, timeout: float) -> list[str]:
    """The outcome of every [address, port] in `targets`, all probed at once, in their order."""
    out: list = [None] * len(targets)

    def one(i: int, address: str, port: int) -> None:
        out[i] = outcome(address, port, timeout)

    threads = [threading.Thread(target=one, args=(i, a, p)) for i, (a, p) in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main(argv: list[str]) -> int:
    print(json.dumps(probe(json.loads(argv[2]), float(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
