"""`fab` as an operator runs it, for the lab tests: the checkout's own fab in a subprocess, no terminal.

Every run names its inventory (the lab unless told another: never what the shell happens to export), says
who it is (the operator's claim the lock and the audit record keep) and gets no stdin unless the test
gives it some. Exit status, stdout and stderr are the test's to read: nothing here raises on a failure.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass

from roadie.core.paths import ROOT

FAB = str(ROOT / ".venv" / "bin" / "fab")
OPERATOR = "lab-tests"


def fab_env(inventory: str = "lab", operator: str = OPERATOR, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a fab run: this process's, the inventory, the operator's name, then `env`."""
    return {**os.environ, "ANSIBLE_INVENTORY": inventory, "ROADIE_OPERATOR": operator, **(env or {})}


@dataclass(frozen=True)
class Ran:
    """One finished `fab` run of this session: what it was asked, what it printed and when (epoch seconds)."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    started: float
    ended: float


# Every `fab` run of the session, in order: the secret-leak test searches what the other tests' loud runs
# printed (and their hosts' journals of the same window) instead of repeating the slowest of them.
RAN: list[Ran] = []


def fab(*args: str, inventory: str = "lab", operator: str = OPERATOR, env: dict[str, str] | None = None,
        input: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `fab ARGS` to its end; `input` is sent on stdin (else stdin is closed). Recorded in RAN."""
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    started = time.time()
    result = subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env=fab_env(inventory, operator, env), **stdin)
    RAN.append(Ran(tuple(args), result.returncode, result.stdout, result.stderr, started, time.time()))
    return result


def ran_ok(*args: str) -> Ran | None:
    """The last successful run of this session whose arguments began with `args`, if any."""
    return next((r for r in reversed(RAN) if r.args[:len(args)] == args and r.returncode == 0), None)


def popen_fab(*args: str, inventory: str = "lab", operator: str = OPERATOR, env: dict[str, str] | None = None,
              **popen: object) -> subprocess.Popen:
    """`fab ARGS` started in the background with the same environment; `popen` says where its output goes."""
    return subprocess.Popen([FAB, *args], cwd=ROOT, text=True, stdin=subprocess.DEVNULL,
                            env=fab_env(inventory, operator, env), **popen)


def start_fab(*args: str, **kwargs: object) -> subprocess.Popen:
    """`fab ARGS` in the background in its own session (for signals mid-command), stdout and stderr read
    line by line into `proc.lines` as they come."""
    proc = popen_fab(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    proc.lines = []                                           # type: ignore[attr-defined]

    def pump() -> None:
        for line in proc.stdout:
            proc.lines.append(line)                           # type: ignore[attr-defined]

    threading.Thread(target=pump, daemon=True).start()
    return proc


def ok(result: subprocess.CompletedProcess) -> str:
    """The stdout of a run that had to succeed (else the test fails showing the output's tail)."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The line a refused command prints: exit 1, one `error: ...` line on stderr, no traceback anywhere."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]
