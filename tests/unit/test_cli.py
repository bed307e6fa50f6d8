"""Bad input to the CLIs: one clear line on stderr, exit status 1, no traceback, no host touched."""

import os
import re
import sys
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invoke import Context, Exit, Result, UnexpectedExit

from roadie.core import cli
from roadie.core.errors import RoadieError
from roadie.deploy.types import Reporter
from roadie.lab import engine
from roadie.status import ops
from tests.unit.cli_run import assert_one_line_error, run_cli


@pytest.mark.parametrize("args, expected", [
    (("fab", "hosts", "--group", "nosuchgroup"), "unknown host or group 'nosuchgroup' in inventory lab"),
    (("fab", "check", "--group", "nosuchgroup"), "unknown host or group 'nosuchgroup'"),
    (("fab", "hosts", "--inventory", "/nonexistent/inv"), "inventory '/nonexistent/inv' not found"),
    (("fab", "hosts", "--inventory", "lab,production"), "one inventory at a time"),
    (("inv", "lab.up", "--stream-hosts", "2"), "--stream-hosts must be a whole number from 3 to 64"),
    (("inv", "lab.up", "--stream-hosts", "65"), "--stream-hosts must be a whole number from 3 to 64"),
    (("inv", "lab.ssh", "nosuchhost"), "unknown host or group 'nosuchhost'"),
    (("inv", "lab.ssh", "stream"), "is a group; name one host"),
    (("inv", "molecule", "--role", "nosuchrole"), "no molecule scenario"),
])
def test_bad_arguments(args, expected):
    assert_one_line_error(run_cli(*args), expected)


def test_inventory_that_does_not_parse(tmp_path):
    (tmp_path / "hosts.yml").write_text("all:\n  hosts: [unclosed\n")
    assert_one_line_error(run_cli("fab", "check", "--inventory", str(tmp_path)), f"inventory {tmp_path}")


def test_inventory_from_environment(tmp_path):
    result = run_cli("fab", "hosts", "--json", env={"ANSIBLE_INVENTORY": "production"})
    assert result.returncode == 0
    assert '"db1.production.stream.internal"' in result.stdout


def test_docker_that_cannot_start_is_one_line(monkeypatch, tmp_path):
    fake = tmp_path / "dockerd"
    fake.write_text("#!/bin/sh\necho 'failed to start daemon: no space left on device' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(engine, "docker_running", lambda: False)
    monkeypatch.setattr(engine, "_which", lambda tool: str(fake))
    monkeypatch.setattr(engine, "LAB_STATE", tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(RoadieError) as err:
        engine.ensure_docker(log=lambda _m: None, timeout=1.0)
    message = str(err.value)
    assert message.startswith("the Docker engine did not start within 1 s: failed to start daemon: no space left")
    assert "\n" not in message


def test_inotify_limit_is_raised_for_many_systemd_hosts(monkeypatch, tmp_path):
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    engine.ensure_inotify(log=lambda _m: None, path=limit)
    assert int(limit.read_text()) == engine.MIN_INOTIFY_INSTANCES
    limit.write_text("4096\n")
    engine.ensure_inotify(log=lambda _m: None, path=limit)
    assert limit.read_text() == "4096\n"


# ---- what hosts send never drives the operator's terminal

# Control characters a terminal acts on: C0 but tab and newline, DEL, C1 (0x9b is the 8-bit CSI).
TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
HOSTILE = "r1\x1b]0;owned\x07 \x1b[2J\x1b[1;31mred\x1b[0m\rFORGED\x9b31m\x00\x1bP+q544e\x1b\\ \x1bc end"


@pytest.mark.parametrize("text, expected", [
    ("release \x1b]0;owned\x07r1", "release r1"),                     # OSC: window title, ended by BEL
    ("\x1b]0;owned\x1b\\title", "title"),                              # OSC ended by ST
    ("\x1b[2Jcleared", "cleared"),                                     # CSI: clear the screen
    ("\x1b[1;31mred\x1b[0m", "red"),                                   # SGR colours
    ("ok\rFORGED", "okFORGED"),                                        # carriage return overwriting the line
    ("a\x9b31mb", "ab"),                                               # 8-bit CSI
    ("nul\x00byte\x07\x7f", "nulbyte"),                                # NUL, BEL, DEL
    ("\x1bP+q544e\x1b\\dcs", "dcs"),                                   # DCS
    ("\x1bcreset", "reset"),                                           # RIS: full terminal reset
    ("\x1b]0;never ended\nnext line", "\nnext line"),                  # unterminated OSC stops at the line end
    ("two\nlines\twith a tab", "two\nlines\twith a tab"),
    ("naïve – ünïcode ✓", "naïve – ünïcode ✓"),
])
def test_clean_removes_terminal_control_and_keeps_text(text, expected):
    assert cli.clean(text) == expected


def test_clean_one_line_turns_line_breaks_and_tabs_into_spaces():
    assert cli.clean("deploy failed:\r\nexit 1\tmore\x1b[2J", one_line=True) == "deploy failed: exit 1 more"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x2ff)))
def test_nothing_that_drives_a_terminal_survives_clean(text):
    assert not TERMINAL_CONTROL.search(cli.clean(text))
    one_line = cli.clean(text, one_line=True)
    assert not TERMINAL_CONTROL.search(one_line) and "\n" not in one_line and "\t" not in one_line


def test_a_table_of_hostile_cells_stays_aligned_and_clean():
    text = cli.table(["host", "release"], [("stream1", HOSTILE), ("stream2", "r2\nsecond line")])
    assert not TERMINAL_CONTROL.search(text)
    lines = text.splitlines()
    assert len(lines) == 3 and lines[2] == "stream2  r2 second line"


def test_what_a_task_prints_and_its_error_pass_clean(capsys):
    @cli.friendly
    def task():
        print(f"stream1: {HOSTILE}")
        Reporter()(f"switched to {HOSTILE}", host="stream2")   # created inside the task, as fab does
        sys.stderr.write(f"stderr {HOSTILE}\n")
        raise RoadieError(f"stream1: stage failed: {HOSTILE}\nsecond line")

    saved = sys.stdout, sys.stderr
    with pytest.raises(Exit) as err:
        task()
    assert (sys.stdout, sys.stderr) == saved
    out, errs = capsys.readouterr()
    assert not TERMINAL_CONTROL.search(out + errs)
    assert out.splitlines() == [f"stream1: {cli.clean(HOSTILE)}", f"stream2: switched to {cli.clean(HOSTILE)}"]
    assert errs == f"stderr {cli.clean(HOSTILE)}\n"
    assert err.value.code == 1
    assert err.value.message == f"error: stream1: stage failed: {cli.clean(HOSTILE, one_line=True)} second line"
    assert "\n" not in err.value.message and "FORGED" in err.value.message


def test_exit_messages_and_failed_commands_pass_clean():
    @cli.friendly
    def exits():
        raise Exit(f"error: stream1: journalctl said {HOSTILE}", code=1)

    @cli.friendly
    def fails():
        raise UnexpectedExit(Result(command="journalctl", stdout=f"out {HOSTILE}", stderr="\x1b]0;owned\x07",
                                    exited=3, hide=("stdout", "stderr")))

    with pytest.raises(Exit) as err:
        exits()
    assert err.value.code == 1 and not TERMINAL_CONTROL.search(err.value.message)
    with pytest.raises(Exit) as err:
        fails()
    assert err.value.code == 3 and "out r1" in err.value.message and not TERMINAL_CONTROL.search(err.value.message)


def test_fab_logs_prints_a_hosts_journal_without_terminal_control(monkeypatch, capsys):
    from fabfile import oncall

    class Journal:
        """A connection whose journalctl answers hostile lines on stdout and stderr."""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def run(self, command, out_stream, err_stream, **kwargs):
            out_stream.write(f"Jan 01 stream[1]: {HOSTILE}\nJan 01 stream[1]: \x1b]0;owned\x07next\n")
            err_stream.write("\x1b[2Jwarning\n")
            return SimpleNamespace(exited=0)

    monkeypatch.setattr(ops.ssh, "connect", lambda host: Journal())
    oncall.logs(Context(), "stream1")
    out, errs = capsys.readouterr()
    assert out.splitlines() == [f"stream1: Jan 01 stream[1]: {cli.clean(HOSTILE)}", "stream1: Jan 01 stream[1]: next"]
    assert errs == "warning\n"
