"""SSH to inventory hosts with Fabric, host keys always verified.

Fabric 3 installs paramiko's AutoAddPolicy and loads no known_hosts, so it would trust any key.
Every Roadie connection instead loads the inventory's known_hosts and uses RejectPolicy: an
unknown or changed host key ends the connection with one clear line.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import shlex
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection, ThreadingGroup
from fabric.exceptions import GroupException
from fabric.runners import Remote
from invoke.exceptions import UnexpectedExit

from roadie.core.errors import RoadieError
from roadie.core.inventory import Host

CONNECT_TIMEOUT = 10

# paramiko logs a failed handshake with a traceback from its transport thread; describe_failure already
# turns that failure into one line, so its log records must not reach Python's last-resort stderr handler.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


_KNOWN_HOSTS: dict[str, tuple[tuple[int, int], paramiko.HostKeys]] = {}
_KNOWN_HOSTS_LOCK = threading.Lock()


def known_host_keys(path: Path, name: str) -> dict[str, paramiko.PKey]:
    """The keys `path` (a known_hosts file) lists for `name` (`addr`, or `[addr]:port` off port 22).

    The file is parsed once per content (size and mtime) and shared: paramiko parses every line and
    checks each against those before it, so loading the whole file for every connection made a
    fan-out's CPU grow with the square of the fleet (bench/fanout.py).
    """
    stat = path.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    with _KNOWN_HOSTS_LOCK:
        cached = _KNOWN_HOSTS.get(str(path))
        if cached is None or cached[0] != version:
            cached = (version, paramiko.HostKeys(str(path)))
            _KNOWN_HOSTS[str(path)] = cached
        return dict(cached[1].lookup(name) or {})


class WholeInputRemote(Remote):
    """Fabric's remote runner, but an in-memory `in_stream` (a request, a secret) is sent in one piece.

    Invoke reads a stream that is not a terminal one byte per loop, with a 10 ms sleep in each: 100 bytes
    a second. A release's staging request (about 6 KB of manifest) took 60 s to arrive (bench/stdin.py).
    """

    def read_our_stdin(self, input_):  # Invoke's signature
        if isinstance(input_, io.StringIO | io.BytesIO):
            data = input_.read()
            return self.decode(data) if isinstance(data, bytes) else data
        return super().read_our_stdin(input_)


class AuthenticationFailed(RoadieError):
    """The host answered with a checked key but refused the account (for example: not provisioned yet)."""


class HostConnection(Connection):
    """A Fabric connection to one inventory host that refuses unknown or changed host keys."""

    def __init__(self, host: Host, connect_timeout: int = CONNECT_TIMEOUT) -> None:
        connect_kwargs: dict = {"allow_agent": host.key_file is None, "look_for_keys": host.key_file is None}
        if host.key_file:
            connect_kwargs["key_filename"] = str(host.key_file)
        # Fabric's own ssh_config loading is off: the inventory is the one source of connection settings.
        config = Config(overrides={"load_ssh_configs": False, "runners": {"remote": WholeInputRemote}})
        super().__init__(host=host.address, user=host.user, port=host.port, config=config,
                         connect_timeout=connect_timeout, connect_kwargs=connect_kwargs)
        self.inventory_host = host
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if not host.known_hosts.is_file():
            raise RoadieError(f"{host.name}: known_hosts file {host.known_hosts} is missing; "
                              "host keys are always checked (for the lab: `inv lab.up`)")
        # Only this host's entries: paramiko checks the key the host offers against these, by this name.
        name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
        for key_type, key in known_host_keys(host.known_hosts, name).items():
            self.client.get_host_keys().add(name, key_type, key)

    def open(self):  # Fabric's signature
        if self.is_connected:
            return None
        sock = None
        try:
            # Our own socket, with Nagle off: the handshake's small packets otherwise wait for delayed
            # ACKs, about 40 ms of every connection (bench/fanout.py).
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connect_kwargs["sock"] = sock
            return super().open()
        except Exception as exc:  # every failure becomes one line naming the host
            if sock is not None:
                sock.close()
            error = AuthenticationFailed if isinstance(exc, paramiko.AuthenticationException) else RoadieError
            raise error(describe_failure(self.inventory_host, exc)) from None
        finally:
            self.connect_kwargs.pop("sock", None)


def describe_failure(host: Host, exc: BaseException) -> str:
    """One line saying why a host could not be reached or used."""
    where = f"{host.name} ({host.address}:{host.port})"
    if isinstance(exc, RoadieError):
        return str(exc)
    if isinstance(exc, paramiko.BadHostKeyException):
        return (f"{where}: host key changed: the host offers {_fingerprint(exc.key)}, "
                f"known_hosts has {_fingerprint(exc.expected_key)}; refusing to connect")
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return f"{where}: host key unknown (not in {host.known_hosts}); refusing to connect"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"{where}: authentication failed for user {host.user}"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionError | socket.timeout
                  | TimeoutError | socket.gaierror):
        return f"{where}: unreachable ({' '.join(str(exc).split()) or type(exc).__name__})"
    if isinstance(exc, UnexpectedExit):
        result = exc.result
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or [""]
        return f"{host.name}: command exited {result.exited}: {detail[0]}"
    return f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}"


def parallel(func: Callable, items: Iterable, max_workers: int = 16) -> list:
    """func over items in threads, results in order; the first exception is raised after all finish."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=min(max_workers, max(1, len(items)))) as pool:
        return list(pool.map(func, items))


def python_command(script: str, *args: object) -> str:
    """A shell command running `script` with python3 on a host (every managed host has it), args quoted."""
    return " ".join(["python3", "-c", shlex.quote(script), *(shlex.quote(str(a)) for a in args)])


def connect(host: Host) -> HostConnection:
    """An opened, verified connection to one host."""
    conn = HostConnection(host)
    conn.open()
    return conn


@dataclass
class HostResult:
    """Outcome of one command on one host."""

    host: str
    ok: bool
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    error: str = ""


def run_parallel(hosts: Iterable[Host], command: str, *, timeout: int | None = 120) -> dict[str, HostResult]:
    """Run a command on every host at once (Fabric ThreadingGroup); never raises for a host's failure."""
    hosts = list(hosts)
    by_address: dict[tuple[str, int], Host] = {(h.address, h.port): h for h in hosts}
    results: dict[str, HostResult] = {}
    connections = []
    for host in hosts:
        try:
            connections.append(HostConnection(host))
        except RoadieError as exc:
            results[host.name] = HostResult(host.name, False, None, error=str(exc))
    if connections:
        group = ThreadingGroup.from_connections(connections)
        try:
            group_result = group.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        except GroupException as exc:
            group_result = exc.result
        finally:
            group.close()
        for conn, outcome in group_result.items():
            host = by_address[(conn.host, conn.port)]
            if isinstance(outcome, BaseException):
                results[host.name] = HostResult(host.name, False, None, error=describe_failure(host, outcome))
            else:
                results[host.name] = HostResult(host.name, outcome.exited == 0, outcome.exited,
                                                outcome.stdout, outcome.stderr)
    return {h.name: results[h.name] for h in hosts}
