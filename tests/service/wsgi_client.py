"""A tiny in-process WSGI client: builds an environ, checks the exchange with wsgiref.validate."""

from __future__ import annotations

import io
from dataclasses import dataclass
from wsgiref.util import FileWrapper, setup_testing_defaults
from wsgiref.validate import validator


@dataclass
class Result:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        import json

        return json.loads(self.body)


def call(app, method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
         body: bytes | None = None, file_wrapper: bool = True, chunked: bool = False) -> Result:
    """Run one request through `app` (wrapped in wsgiref's validator) and collect the whole answer."""
    environ: dict = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": ""}
    data = body or b""
    environ["wsgi.input"] = io.BytesIO(data)
    if chunked:
        environ["wsgi.input_terminated"] = True
    elif body is not None:
        environ["CONTENT_LENGTH"] = str(len(data))
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    setup_testing_defaults(environ)
    if file_wrapper:
        environ["wsgi.file_wrapper"] = FileWrapper
    else:
        environ.pop("wsgi.file_wrapper", None)
    seen: dict = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"] = int(status.split()[0])
        seen["headers"] = {k.lower(): v for k, v in response_headers}
        return lambda _data: None

    result = validator(app)(environ, start_response)
    try:
        chunks = [bytes(chunk) for chunk in result]
    finally:
        result.close()
    return Result(seen["status"], seen["headers"], b"".join(chunks))
