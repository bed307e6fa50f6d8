"""Client traffic through the balancer: single requests, and background traffic while something changes
with every failed request counted.

Bounded in count and time, aimed only at the lab balancer's own address.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field

from tests.web import request

BIG = 28 * 1024 * 1024          # bytes of a long stream: far more than every buffer on its way


def get(host: str, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """One request to the balancer (or a host) on port 80: (status, headers with lower-case names, body)."""
    return request(host, 80, method, path, headers, body)


@dataclass
class TrafficReport:
    sent: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


class Traffic:
    """Background GETs against the balancer from a few threads until stopped (or the limits)."""

    def __init__(self, host: str, paths: tuple[str, ...] = ("/tracks", "/tracks/1", "/healthz"),
                 threads: int = 3, max_seconds: float = 600, max_requests: int = 200_000,
                 interval: float = 0.02) -> None:
        self.host, self.paths, self.threads = host, paths, threads
        self.max_seconds, self.max_requests, self.interval = max_seconds, max_requests, interval
        self.report = TrafficReport()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _one(self, path: str) -> str | None:
        conn = http.client.HTTPConnection(self.host, 80, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return None if response.status == 200 else f"{path}: HTTP {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            return f"{path}: {type(exc).__name__}: {exc}"
        finally:
            conn.close()

    def _loop(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        i = index
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.report.sent >= self.max_requests:
                    return
                self.report.sent += 1
            error = self._one(self.paths[i % len(self.paths)])
            i += 1
            if error:
                with self._lock:
                    self.report.failed += 1
                    if len(self.report.failures) < 20:
                        self.report.failures.append(error)
            time.sleep(self.interval)

    def __enter__(self) -> Traffic:
        for i in range(self.threads):
            worker = threading.Thread(target=self._loop, args=(i,), daemon=True)
            worker.start()
            self._workers.append(worker)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)


def slow_download(host: str, path: str, bytes_per_tick: int = 2048, tick: float = 0.05,
                  until: threading.Event | None = None) -> tuple[int, bytes, dict]:
    """GET `path` reading slowly with a tiny receive buffer (flow control keeps it in flight) until
    `until` is set, then fast; returns (status, body, headers)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((host, 80))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        slow = until is None or not until.is_set()
        chunk = sock.recv(bytes_per_tick if slow else 65536)
        if not chunk:
            break
        data += chunk
        if slow:
            time.sleep(tick)
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, body, headers


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return out
