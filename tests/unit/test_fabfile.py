"""The fabfile/ package: the tasks `fab --list` shows, each thin, documented and failing one way."""

import ast
import inspect
import textwrap

import pytest

import fabfile
from roadie.core.cli import friendly

# What `fab --list` shows. A task renamed, added or removed fails here: operators and scripts use these names.
TASK_NAMES = [
    "audit", "check", "deploy", "disk", "drain", "hosts", "logs", "releases", "restart", "rollback", "run", "seed",
    "status", "undrain",
    "cache.flush", "cache.info",
    "db.backup", "db.backups", "db.failover", "db.replication", "db.restore-check",
    "lock.release", "lock.status",
    "maintenance.off", "maintenance.on", "maintenance.status",
]
MAX_BODY_LINES = 20


def _tasks():
    return {name: fabfile.ns[name] for name in fabfile.ns.task_names}


def test_fab_lists_exactly_these_tasks():
    assert sorted(fabfile.ns.task_names) == sorted(TASK_NAMES)
    assert all(aliases == [] for aliases in fabfile.ns.task_names.values())


def test_each_task_is_named_after_its_function():
    for name, task in _tasks().items():
        assert name.rsplit(".", 1)[-1] == task.name.replace("_", "-"), name
        assert inspect.unwrap(task.body).__name__ == task.name, name


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_fails_through_friendly(name):
    # friendly (roadie/core/cli.py) is the one place a RoadieError becomes `error: ...` and exit status 1.
    body = _tasks()[name].body
    assert body.__code__ is friendly(lambda: None).__code__, f"{name} is not wrapped in roadie.core.cli.friendly"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_has_a_one_line_summary_and_help_for_every_flag(name):
    task = _tasks()[name]
    doc = inspect.unwrap(task.body).__doc__ or ""
    assert doc.strip() and "\n" not in doc.strip(), f"{name}: one-line docstring"
    arguments = task.get_arguments()
    assert arguments and all(arg.help for arg in arguments), [a.name for a in arguments if not a.help]


def _body_lines(func) -> int:
    """Lines of a function's body, without its docstring (decorators and signature are not the body)."""
    node = ast.parse(textwrap.dedent(inspect.getsource(func))).body[0]
    statements = node.body[1:] if ast.get_docstring(node) is not None else node.body
    return statements[-1].end_lineno - statements[0].lineno + 1


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_bodies_stay_thin(name):
    assert _body_lines(inspect.unwrap(_tasks()[name].body)) <= MAX_BODY_LINES
