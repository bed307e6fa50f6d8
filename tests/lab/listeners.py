"""Slow listeners (issue 16): many audio downloads through the balancer, each reading a few KB a second.

One asyncio loop, in a thread of its own, holds every connection. A listener sends one GET, reads the
status line and the headers, then reads `rate` bytes a second for as long as it stays open, with a small
receive buffer so it does not read ahead. Listeners take their source address in turn from `sources`:
addresses the controller holds on the lab network (`lab_sources`), so per-client limits count them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from roadie.lab import lab

TICK = 0.25          # seconds between two reads of one listener


@dataclass
class Listener:
    source: str
    status: int | None = None
    body: int = 0             # body bytes read
    last_read: float = 0.0    # time.monotonic() of the last body bytes read
    error: str = ""


class Listeners:
    """Open with `open(count)`; `receiving(since)` counts those still reading audio. A context manager."""

    def __init__(self, host: str, path: str, rate: int = 4096, sources: tuple[str, ...] = ("",),
                 head_timeout: float = 10.0) -> None:
        self.host, self.path, self.rate, self.sources = host, path, rate, sources
        self.head_timeout = head_timeout
        self.all: list[Listener] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="listeners", daemon=True)
        self._tasks: list[asyncio.Task] = []

    def __enter__(self) -> Listeners:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def open(self, count: int, per_second: float = 200) -> None:
        """Open `count` more listeners, `per_second` at a time; return once each has its answer (or failed)."""
        async def ramp() -> None:
            for i in range(count):
                listener = Listener(self.sources[len(self.all) % len(self.sources)])
                self.all.append(listener)
                self._tasks.append(asyncio.ensure_future(self._listen(listener)))
                if (i + 1) % max(1, int(per_second / 10)) == 0:
                    await asyncio.sleep(0.1)

        asyncio.run_coroutine_threadsafe(ramp(), self._loop).result(timeout=count / per_second + 60)
        deadline = time.monotonic() + self.head_timeout + 5
        while time.monotonic() < deadline and any(x.status is None and not x.error for x in self.all):
            time.sleep(0.1)

    def receiving(self, since: float) -> int:
        """Listeners answered 200 or 206 that read audio after `since` (a time.monotonic())."""
        return sum(1 for x in self.all if x.status in (200, 206) and x.last_read >= since and not x.error)

    def summary(self) -> dict:
        return {"listeners": len(self.all), "statuses": dict(Counter(str(x.status) for x in self.all)),
                "errors": dict(Counter(x.error for x in self.all if x.error)),
                "body_bytes": sum(x.body for x in self.all)}

    async def _listen(self, listener: Listener) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        writer = None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            if listener.source:
                sock.bind((listener.source, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (self.host, 80)), self.head_timeout)
            reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
            writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
            listener.status = int(head.split(b" ", 2)[1])
            step = max(1, int(self.rate * TICK))
            while True:
                data = await reader.read(step)
                if not data:
                    listener.error = listener.error or ("ended" if listener.status in (200, 206) else "")
                    return
                listener.body += len(data)
                listener.last_read = time.monotonic()
                await asyncio.sleep(TICK)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            listener.error = "no answer" if listener.status is None else "stalled"
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            listener.error = type(exc).__name__
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()


def bridge() -> str:
    """The controller's interface on the lab network."""
    network_id = subprocess.run(["docker", "network", "inspect", "-f", "{{.Id}}", lab.NETWORK], check=True,
                                capture_output=True, text=True).stdout.strip()
    return f"br-{network_id[:12]}"


@contextlib.contextmanager
def lab_sources(count: int, first: int = 200) -> Iterator[tuple[str, ...]]:
    """`count` more addresses for the controller on the lab network (from .`first` up), removed afterwards:
    each stands for one client address behind the balancer's and nginx's per-client limits."""
    device = bridge()
    addresses = tuple(str(lab.SUBNET.network_address + first + i) for i in range(count))
    assert all(ipaddress.ip_address(a) in lab.SUBNET for a in addresses)
    added = []
    try:
        for address in addresses:
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", device], check=True, capture_output=True)
            added.append(address)
        yield addresses
    finally:
        for address in added:
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", device], check=False, capture_output=True)
