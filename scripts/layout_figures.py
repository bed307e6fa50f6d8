#!/usr/bin/env python3
"""Print the layout figures the restructuring watches: long modules and long Fabric task bodies.

- every Python module under roadie/ and the fabfile (fabfile.py, or each module of a fabfile/ package)
  longer than --module-lines (default 300) lines, with its line count;
- every Fabric task (a function decorated with @task, also @task(...) or fabric.task, in the fabfile)
  whose body is longer than --task-lines (default 20) lines, with its count: the lines from the first
  statement after the docstring to the function's last line (decorators, the signature and the
  docstring are not counted; blank lines and comments inside the body are).

It only reports: the exit status is 0 whatever it finds. Run it as `inv layout` or
`.venv/bin/python scripts/layout_figures.py`.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Figure:
    """One module's or one task's line count."""

    where: str     # path relative to the checkout, with ":line" for a task
    name: str      # "" for a module
    lines: int


def fabfile_modules(root: Path) -> list[Path]:
    """fabfile.py, or the modules of the fabfile/ package, whichever the checkout has."""
    package = root / "fabfile"
    if package.is_dir():
        return sorted(package.rglob("*.py"))
    return [root / "fabfile.py"] if (root / "fabfile.py").is_file() else []


def module_lines(root: Path) -> list[Figure]:
    """Every module under roadie/ and of the fabfile, with its number of lines."""
    paths = sorted((root / "roadie").rglob("*.py")) + fabfile_modules(root)
    return [Figure(str(p.relative_to(root)), "", len(p.read_text(encoding="utf-8").splitlines())) for p in paths]


def _is_task(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "task") or (
        isinstance(target, ast.Attribute) and target.attr == "task")


def body_lines(func: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of `func`'s body after its docstring (0 for a body that is only a docstring)."""
    body = func.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    return func.end_lineno - body[0].lineno + 1


def task_lines(root: Path) -> list[Figure]:
    """Every Fabric task of the fabfile, with the number of lines of its body."""
    found = []
    for path in fabfile_modules(root):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(map(_is_task, node.decorator_list)):
                found.append(Figure(f"{path.relative_to(root)}:{node.lineno}", node.name, body_lines(node)))
    return found


def report(root: Path, module_limit: int, task_limit: int) -> str:
    """The two lists, longest first, each with how many of how many are over the limit."""
    modules = module_lines(root)
    tasks = task_lines(root)
    long_modules = sorted((m for m in modules if m.lines > module_limit), key=lambda f: (-f.lines, f.where))
    long_tasks = sorted((t for t in tasks if t.lines > task_limit), key=lambda f: (-f.lines, f.where))
    found = fabfile_modules(root)
    fabfile = ("fabfile/" if found[0].parent.name == "fabfile" else "fabfile.py") if found else "no fabfile"
    out = [f"Python modules over {module_limit} lines (roadie/, {fabfile}): {len(long_modules)} of {len(modules)}"]
    out += [f"  {m.lines:5d}  {m.where}" for m in long_modules]
    out.append(f"Fabric task bodies over {task_limit} lines ({fabfile}): {len(long_tasks)} of {len(tasks)} tasks")
    out += [f"  {t.lines:5d}  {t.name}  ({t.where})" for t in long_tasks]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module-lines", type=int, default=300, help="Report modules longer than this (300).")
    parser.add_argument("--task-lines", type=int, default=20, help="Report task bodies longer than this (20).")
    parser.add_argument("--root", type=Path, default=ROOT, help="The checkout (default: this script's).")
    args = parser.parse_args(argv)
    print(report(args.root.resolve(), args.module_lines, args.task_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
