"""Just enough HTTP on top of WSGI: responses, a path router, a size-limited body reader."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


@dataclass
class Response:
    """A status, headers and a body: bytes or an iterable of byte chunks (closed by the server)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Iterable[bytes] = b""

    @property
    def status_line(self) -> str:
        return f"{self.status} {HTTPStatus(self.status).phrase}"


def json_response(status: int, data: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    return Response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                             *(headers or [])], body)


def error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


class HTTPError(Exception):
    """Raised by a handler to answer with an error status and a one-line message."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []

    def response(self) -> Response:
        return error(self.status, self.message, self.headers)


Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    path: str                      # as added, `<name>` segments and all: a bounded metrics label
    pattern: re.Pattern[str]
    methods: dict[str, Handler]


class Router:
    """Exact-match routes with `<name>` segments ([^/]+, passed to the handler as keyword arguments)."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, path: str, **methods: Handler) -> None:
        regex = re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", path)
        self._routes.append(Route(path, re.compile(regex), {m.upper(): h for m, h in methods.items()}))

    def route(self, path: str) -> Route | None:
        """The route whose pattern matches `path`, or None."""
        return next((r for r in self._routes if r.pattern.fullmatch(path)), None)

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path arguments; HTTPError 404 or 405 (with Allow) otherwise."""
        for route in self._routes:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            allowed = dict(route.methods)
            if "GET" in allowed:
                allowed.setdefault("HEAD", allowed["GET"])
            if method not in allowed:
                raise HTTPError(405, f"method {method} not allowed",
                                [("Allow", ", ".join(sorted(allowed)))])
            return allowed[method], found.groupdict()
        raise HTTPError(404, "not found")


def read_body(environ: Environ, limit: int) -> bytes:
    """The request body, at most `limit` bytes: HTTPError 413 over it, 411 when its length is unknown."""
    length_text = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length_text:
        if not (length_text.isascii() and length_text.isdigit()):
            raise HTTPError(400, "bad Content-Length")
        length = int(length_text)
        if length > limit:
            raise HTTPError(413, f"body is larger than {limit} bytes")
        body = stream.read(length) if length else b""
        if len(body) < length:
            raise HTTPError(400, "body shorter than Content-Length")
        return body
    if environ.get("wsgi.input_terminated"):  # chunked upload, the server marks the end
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise HTTPError(413, f"body is larger than {limit} bytes")
        return body
    raise HTTPError(411, "Content-Length required")
