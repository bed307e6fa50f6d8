"""What `inv lint` checks beyond Python and YAML: every shell program in the checkout, with shellcheck.

A shell program is a file whose first line is a shebang naming sh, bash or dash (roles' files/, bin/,
.ci/, lab/image/, ...), found by that line rather than listed, so a new one is checked without a change
here. Role templates (*.j2) are not programs: a shell program a role installs ships from files/ and takes
the role's values from a templated settings file (STYLE.md), so a shell shebang in a template is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT

SHEBANG = re.compile(rb"#!\s*(?:/usr)?/bin/(?:env\s+)?(sh|bash|dash)(?:\s|$)")
# Generated, vendored or git's own: never a program of the project's.
SKIPPED_DIRS = {".git", ".venv", ".lab", ".cache", ".ansible", ".ruff_cache", ".pytest_cache", ".hypothesis",
                "__pycache__", "build", "dist", "logs", "node_modules"}


def _is_shell(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return SHEBANG.match(first) is not None


def shell_programs(root: Path = ROOT) -> list[Path]:
    """Every shell program under `root`, relative to it, sorted; RoadieError for a shell template."""
    found: list[Path] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        for entry in directory.iterdir():
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if entry.name not in SKIPPED_DIRS:
                    pending.append(entry)
            elif entry.is_file() and _is_shell(entry):
                found.append(entry.relative_to(root))
    templates = [str(p) for p in found if p.suffix == ".j2"]
    if templates:
        raise RoadieError(f"shell programs as templates: {', '.join(sorted(templates))}; ship them from the "
                          "role's files/ with a templated settings file")
    return sorted(found)


def shellcheck_argv(programs: list[Path]) -> list[str]:
    """The shellcheck command for `programs` (paths relative to the checkout): every check, no rc file."""
    return ["shellcheck", "--norc", *map(str, programs)]
