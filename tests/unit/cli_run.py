"""The checkout's own command-line tools (fab, inv, ...) run as a user runs them, and fab's tasks looked up by
the names `fab --list` shows, for the unit tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from roadie.core.paths import ROOT

VENV = ROOT / ".venv" / "bin"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`args[0]` from the venv with the rest as its arguments; its exit status, stdout and stderr."""
    return subprocess.run([str(VENV / args[0]), *args[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    """Exit status 1, one `error: ...` line on stderr that says `expected`, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def fab_task(name: str) -> Callable:
    """The function behind the fab task `name` (`run`, `audit`, `cache.flush`), found through the fabfile's
    collection as fab finds it, wherever in the fabfile the task is defined."""
    import fabfile

    return fabfile.ns[name].body
