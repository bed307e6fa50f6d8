"""`fab status`'s probe: what one host reports about itself, as one JSON line.

roadie.status.probe runs this on every host as the deploy user with roadie.remote.command:
  status_probe.py ARGS-JSON      (stdin: one line, Redis's admin password or empty)
ARGS:
  units             systemd units to report (systemctl is-active)
  stream            path of the stream host's `current` link, whose target names the release; or null
  postgres          true on database hosts: role, lag, replicas, and the client connections from
                    `stream_addresses` (which host the stream hosts use), as postgres through sudo
  redis             {"user", "port"} on cache hosts: role, memory, clients, and the clients from
                    `stream_addresses`; or null
  stream_addresses  the stream hosts' private IP addresses
Always: hostname, load, memory, disk of /. A probe that fails on a host (psql, redis-cli) reports
{"error": ...} for its part; the rest still answers. Bad arguments are refused with one line on stderr
(exit status 3).

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys

from roadie.remote.answer import answer


class ProbeError(Exception):
    """Arguments the probe refuses: one line."""


def run(cmd: list[str], env: dict | None = None) -> tuple[int, str, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env, cwd="/", check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", f"{cmd[0]}: {exc}"
    return p.returncode, p.stdout.strip(), p.stderr.strip()


def _last_line(*texts: str) -> str:
    for text in texts:
        lines = text.splitlines()
        if lines:
            return lines[-1][:160]
    return "no answer"


def addresses(values: object) -> list[str]:
    """The stream hosts' addresses, each a valid IP address (they go into SQL as literals)."""
    if not isinstance(values, list):
        raise ProbeError("stream_addresses must be a list")
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_address(value)))
        except (TypeError, ValueError):
            raise ProbeError(f"stream address {str(value)[:60]!r} is not an IP address") from None
    return out


def postgres_sql(stream_addresses: list[str]) -> str:
    """One query: standby?, replay lag in bytes, replicas, connections from the stream hosts."""
    # Each literal is an IP address as ipaddress formats it (digits, hex, dots, colons): nothing to escape.
    inet = ", ".join(f"'{ipaddress.ip_address(a)}'" for a in stream_addresses)
    return ("SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN "  # noqa: S608
            "COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0) ELSE "
            "COALESCE((SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) FROM pg_stat_replication), 0) "
            "END, (SELECT count(*) FROM pg_stat_replication), "
            f"(SELECT count(*) FROM pg_stat_activity WHERE client_addr = ANY(ARRAY[{inet}]::inet[]))")


def postgres(stream_addresses: list[str]) -> dict:
    # As postgres through sudo: the deploy user may act as postgres on database hosts, never as root.
    code, stdout, stderr = run(["sudo", "-n", "-u", "postgres", "psql", "-XAtq", "-F", "|", "-d", "postgres",
                                "-c", postgres_sql(stream_addresses)])
    fields = stdout.split("|") if code == 0 else []
    if len(fields) != 4:
        return {"error": _last_line(stderr, stdout)}
    standby, lag, replicas, clients = fields
    return {"role": "replica" if standby == "t" else "primary", "lag_bytes": int(float(lag)),
            "replicas": int(replicas), "stream_clients": int(clients)}


def _client_ip(addr: str) -> str:
    """The IP of a CLIENT LIST addr= field: 10.0.0.5:41234 or [::1]:41234 / ::1:41234."""
    host = addr.rsplit(":", 1)[0]
    return host.strip("[]")


def stream_clients_of(client_list: str, stream_addresses: list[str]) -> int:
    wanted = {ipaddress.ip_address(a) for a in stream_addresses}
    count = 0
    for line in client_list.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        try:
            if ipaddress.ip_address(_client_ip(fields.get("addr", ""))) in wanted:
                count += 1
        except ValueError:
            continue
    return count


def redis(settings: dict, secret: str, stream_addresses: list[str]) -> dict:
    env = dict(os.environ, REDISCLI_AUTH=secret)
    base = ["redis-cli", "--no-auth-warning", "--user", str(settings["user"]), "-h", "127.0.0.1",
            "-p", str(int(settings["port"]))]
    code, stdout, stderr = run([*base, "INFO"], env=env)
    info = dict(line.split(":", 1) for line in stdout.splitlines() if ":" in line and not line.startswith("#"))
    if code != 0 or "role" not in info:
        return {"error": _last_line(stderr, stdout)}
    out = {"role": info["role"], "used_memory": int(info.get("used_memory", 0)),
           "clients": int(info.get("connected_clients", 0)), "stream_clients": None}
    code, stdout, _ = run([*base, "CLIENT", "LIST"], env=env)
    if code == 0:
        out["stream_clients"] = stream_clients_of(stdout, stream_addresses)
    return out


def probe(args: dict, secret: str) -> dict:
    """Everything this host reports."""
    stream_addresses = addresses(args.get("stream_addresses", []))
    out: dict = {"hostname": os.uname().nodename, "load": list(os.getloadavg())}
    mem = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            mem[key] = int(value.split()[0]) * 1024
    out["mem_total"], out["mem_available"] = mem["MemTotal"], mem["MemAvailable"]
    disk = shutil.disk_usage("/")
    out["disk_total"], out["disk_used"] = disk.total, disk.used
    out["units"] = {unit: run(["systemctl", "is-active", unit])[1] or "unknown" for unit in args.get("units", [])}
    if args.get("stream"):
        try:
            out["release"] = os.path.basename(os.readlink(args["stream"]))
        except OSError:
            out["release"] = None
    if args.get("postgres"):
        out["pg"] = postgres(stream_addresses)
    if args.get("redis"):
        out["redis"] = redis(args["redis"], secret, stream_addresses)
    return out


def main(argv: list[str]) -> int:
    def work() -> str:
        if len(argv) != 2:
            raise ProbeError("usage: status_probe.py ARGS-JSON")
        try:
            args = json.loads(argv[1])
        except ValueError:
            raise ProbeError("the arguments are not valid JSON") from None
        if not isinstance(args, dict):
            raise ProbeError("the arguments must be a JSON object")
        return json.dumps(probe(args, sys.stdin.readline().rstrip("\n")))

    return answer(work, ProbeError, os_errors=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
