"""Time to hand a program on a lab host its request on stdin, by request size: Fabric's stock runner
against Roadie's (roadie.core.ssh.WholeInputRemote), which sends an in-memory request in one piece.

    .venv/bin/python bench/stdin.py

A release's staging request is about 6 KB (the manifest); the stock runner reads a non-terminal stream
one byte per 10 ms loop. Needs a running lab (`inv lab.up`).
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fabric.runners import Remote

from roadie.core import inventory, ssh

SIZES = (100, 1000, 6000)
READ_ONE_LINE = "python3 -c 'import sys; sys.stdin.readline()'"


def seconds(conn: ssh.HostConnection, size: int) -> float:
    started = time.monotonic()
    conn.run(READ_ONE_LINE, hide=True, in_stream=io.StringIO("x" * size + "\n"), timeout=300)
    return time.monotonic() - started


def main() -> None:
    host = inventory.load("lab").hosts["stream1"]
    conn = ssh.connect(host)
    rows = []
    for size in SIZES:
        ours = seconds(conn, size)
        conn.config.runners.remote = Remote
        stock = seconds(conn, size)
        conn.config.runners.remote = ssh.WholeInputRemote
        rows.append((size, stock, ours))
    conn.close()
    print(f"{'request bytes':>14} {'stock runner s':>15} {'Roadie runner s':>16}")
    for size, stock, ours in rows:
        print(f"{size:>14} {stock:>15.2f} {ours:>16.2f}")


if __name__ == "__main__":
    main()
