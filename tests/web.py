"""One HTTP request from a test, to the lab's balancer or hosts or to a service on loopback."""

from __future__ import annotations

import http.client


def request(host: str, port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None, timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body); the connection is closed whatever happens."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()
