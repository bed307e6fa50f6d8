"""Programs Roadie runs on hosts: real files here, linted and unit-tested locally, sent over SSH by `command`.

Each is a standard-library-only Python script that reads what it needs from its arguments or stdin and
reports a refusal as one line on stderr with a non-zero exit status. A program is sent as the text of
`python3 -c`; the modules it may import from here, the LIBRARIES (answer.py: how a program reports;
release_listing.py: the releases on a stream host; release_checks.py: what a release may hold, also
checked on the controller), are sent ahead of it in the same text.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

from roadie.core.errors import RoadieError
from roadie.core.ssh import python_command

HERE = Path(__file__).resolve().parent
# Modules, not programs; they import no other module here.
LIBRARIES = ("answer.py", "release_listing.py", "release_checks.py")
# One import of a library: `from roadie.remote.NAME import a, b` or the parenthesised form over several lines.
_LIBRARY_IMPORT = re.compile(r"^from roadie\.remote\.(\w+) import (?:\([^)]*\)|[^\n(]*)\n", re.M)
_FUTURE = "from __future__ import annotations\n"


@cache
def source(name: str) -> str:
    """The text of the program `name` (a file in this directory)."""
    path = HERE / name
    if path.parent != HERE or path.suffix != ".py" or not path.is_file():
        raise ValueError(f"no host program {name!r} in {HERE}")
    text = path.read_text(encoding="utf-8")
    used = list(dict.fromkeys(f"{module}.py" for module in _LIBRARY_IMPORT.findall(text)))
    if used:
        if name in LIBRARIES or not set(used) <= set(LIBRARIES):
            raise ValueError(f"{name}: a host program imports only {', '.join(LIBRARIES)} from here, "
                             "and they import nothing from here")
        # One script: the program's docstring and its __future__ import (which must come first), the code
        # of each library it imports, then the rest of the program without its imports of them.
        head, rest = _docstring(text)
        shared = "".join(_docstring(source(library))[1].replace(_FUTURE, "") for library in used)
        text = head + _FUTURE + shared + _LIBRARY_IMPORT.sub("", rest.replace(_FUTURE, ""))
    return text


def _docstring(text: str) -> tuple[str, str]:
    """A module's text split after its docstring."""
    tree = ast.parse(text)
    first = tree.body[0] if tree.body else None
    if ast.get_docstring(tree) is None or first is None:
        return "", text
    lines = text.splitlines(keepends=True)
    return "".join(lines[:first.end_lineno]), "".join(lines[first.end_lineno:])


def command(name: str, *args: object) -> str:
    """The shell command that runs the program `name` with python3 on a host, `args` quoted."""
    return python_command(source(name), *args)


def host_label(conn: object) -> str:
    """The inventory name of the host behind `conn` (its address, or "lock host", when it has none)."""
    host = getattr(conn, "inventory_host", None)
    return host.name if host else getattr(conn, "host", "lock host")


def ask(conn: object, name: str, *args: object, what: str) -> dict:
    """Run the program `name` through `conn` and read its JSON answer (its last line on stdout). A non-zero
    exit is one RoadieError line: "`what` failed: " and the program's last line on stderr."""
    result = conn.run(command(name, *args), hide=True, warn=True, in_stream=False)  # type: ignore[attr-defined]
    if result.exited != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RoadieError(f"{what} failed: {detail}")
    return json.loads(result.stdout.strip().splitlines()[-1])
