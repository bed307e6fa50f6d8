"""scripts/layout_figures.py: long modules and long Fabric task bodies, counted with ast."""

import importlib.util
import subprocess
import sys
import textwrap

from roadie.core.paths import ROOT

SCRIPT = ROOT / "scripts" / "layout_figures.py"
_SPEC = importlib.util.spec_from_file_location("layout_figures", SCRIPT)
layout_figures = importlib.util.module_from_spec(_SPEC)
sys.modules["layout_figures"] = layout_figures   # its dataclass looks its module up
_SPEC.loader.exec_module(layout_figures)

FABFILE = textwrap.dedent('''\
    """Tasks."""
    from fabric import task
    import fabric


    @task(help={"x": "X."})
    @friendly
    def long_one(c, x=None):
        """Docstring,
        on two lines: not counted."""
        a = 1
    {body}

    @fabric.task
    def short(c):
        """Only a docstring."""


    @task
    def bare(c):
        return 1


    def helper():
    {body}
''')


def _checkout(tmp_path, body_lines: int, package: bool = False):
    body = "\n".join(f"    a += {i}" for i in range(body_lines - 1))
    (tmp_path / "roadie" / "remote").mkdir(parents=True)
    (tmp_path / "roadie" / "big.py").write_text("x = 1\n" * 301)
    (tmp_path / "roadie" / "remote" / "prog.py").write_text("x = 1\n" * 302)
    (tmp_path / "roadie" / "small.py").write_text("x = 1\n" * 300)
    text = FABFILE.replace("{body}", body)
    if package:
        (tmp_path / "fabfile").mkdir()
        (tmp_path / "fabfile" / "db.py").write_text(text)
    else:
        (tmp_path / "fabfile.py").write_text(text)


def test_task_bodies_are_counted_after_the_docstring_and_helpers_are_not_tasks(tmp_path):
    _checkout(tmp_path, body_lines=21)
    tasks = {t.name: t.lines for t in layout_figures.task_lines(tmp_path)}
    assert tasks == {"long_one": 21, "short": 0, "bare": 1}


def test_the_report_lists_what_is_over_the_limits_longest_first(tmp_path):
    _checkout(tmp_path, body_lines=21, package=True)
    assert layout_figures.report(tmp_path, 300, 20).splitlines() == [
        "Python modules over 300 lines (roadie/, fabfile/): 2 of 4",
        "    302  roadie/remote/prog.py",
        "    301  roadie/big.py",
        "Fabric task bodies over 20 lines (fabfile/): 1 of 3 tasks",
        "     21  long_one  (fabfile/db.py:8)",
    ]


def test_the_script_reports_on_this_checkout_and_exits_0():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Python modules over 300 lines (roadie/, fabfile")
    assert "\nFabric task bodies over 20 lines (" in done.stdout
