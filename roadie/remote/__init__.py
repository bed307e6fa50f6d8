"""Programs Roadie runs on hosts: real files here, linted and unit-tested locally, sent over SSH by `command`.

Each is a standard-library-only Python script that reads what it needs from its arguments or stdin and
reports a refusal as one line on stderr with a non-zero exit status. A program is sent alone, as the
text of `python3 -c`, so it imports nothing from this package: what two programs share is repeated in
each (a few lines of main()), never imported.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from roadie.ssh import python_command

HERE = Path(__file__).resolve().parent


@cache
def source(name: str) -> str:
    """The text of the program `name` (a file in this directory)."""
    path = HERE / name
    if path.parent != HERE or path.suffix != ".py" or not path.is_file():
        raise ValueError(f"no host program {name!r} in {HERE}")
    return path.read_text(encoding="utf-8")


def command(name: str, *args: object) -> str:
    """The shell command that runs the program `name` with python3 on a host, `args` quoted."""
    return python_command(source(name), *args)
