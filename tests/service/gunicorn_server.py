"""The stream service under gunicorn with app/gunicorn.conf.py on a loopback port, spoken to over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.service.servers import APP_DIR, free_port, wait_for
from tests.web import request


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        return request("127.0.0.1", self.port, method, path, headers, body, timeout=10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_gunicorn(env: dict[str, str], workdir: Path, workers: int = 1) -> Server:
    """gunicorn as systemd would start it, but from another directory (the config chdirs to app/)."""
    port = free_port()
    log = workdir / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(APP_DIR / "gunicorn.conf.py")],
            env={"PATH": os.environ["PATH"], "HOME": str(workdir), **env, "STREAM_BIND": f"127.0.0.1:{port}",
                 "STREAM_WORKERS": str(workers), "STREAM_THREADS": "4", "STREAM_GRACEFUL_TIMEOUT": "5"},
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, port, log)

    def answering() -> bool:
        assert process.poll() is None, log.read_text()
        return server.request("GET", "/healthz")[0] in (200, 503)

    wait_for(answering, "gunicorn")
    return server
