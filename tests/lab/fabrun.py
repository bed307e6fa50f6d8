"""`fab` as an operator runs it, for the lab tests: the checkout's own fab in a subprocess, no terminal.

Every run names its inventory (the lab unless told another: never what the shell happens to export), says
who it is (the operator's claim the lock and the audit record keep) and gets no stdin unless the test
gives it some. Exit status, stdout and stderr are the test's to read: nothing here raises on a failure.
"""

from __future__ import annotations

import os
import subprocess
import threading

from roadie.paths import ROOT

FAB = str(ROOT / ".venv" / "bin" / "fab")
OPERATOR = "lab-tests"


def fab_env(inventory: str = "lab", operator: str = OPERATOR, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a fab run: this process's, the inventory, the operator's name, then `env`."""
    return {**os.environ, "ANSIBLE_INVENTORY": inventory, "ROADIE_OPERATOR": operator, **(env or {})}


def fab(*args: str, inventory: str = "lab", operator: str = OPERATOR, env: dict[str, str] | None = None,
        input: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run `fab ARGS` to its end; `input` is sent on stdin (else stdin is closed)."""
    stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=fab_env(inventory, operator, env), **stdin)


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
