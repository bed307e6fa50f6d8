"""Bad input to the CLIs: one clear line on stderr, exit status 1, no traceback, no host touched."""

import os
import subprocess

import pytest

from roadie import lab
from roadie.errors import RoadieError
from roadie.paths import ROOT

VENV = ROOT / ".venv" / "bin"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV / args[0]), *args[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def _assert_one_line_error(result, expected):
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


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
    _assert_one_line_error(_cli(*args), expected)


def test_inventory_that_does_not_parse(tmp_path):
    (tmp_path / "hosts.yml").write_text("all:\n  hosts: [unclosed\n")
    _assert_one_line_error(_cli("fab", "check", "--inventory", str(tmp_path)), f"inventory {tmp_path}")


def test_inventory_from_environment(tmp_path):
    result = _cli("fab", "hosts", "--json", env={"ANSIBLE_INVENTORY": "production"})
    assert result.returncode == 0
    assert '"db1.production.stream.internal"' in result.stdout


def test_docker_that_cannot_start_is_one_line(monkeypatch, tmp_path):
    fake = tmp_path / "dockerd"
    fake.write_text("#!/bin/sh\necho 'failed to start daemon: no space left on device' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(lab, "docker_running", lambda: False)
    monkeypatch.setattr(lab, "_which", lambda tool: str(fake))
    monkeypatch.setattr(lab, "LAB_STATE", tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(RoadieError) as err:
        lab.ensure_docker(log=lambda _m: None, timeout=1.0)
    message = str(err.value)
    assert message.startswith("the Docker engine did not start within 1 s: failed to start daemon: no space left")
    assert "\n" not in message


def test_inotify_limit_is_raised_for_many_systemd_hosts(monkeypatch, tmp_path):
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    lab.ensure_inotify(log=lambda _m: None, path=limit)
    assert int(limit.read_text()) == lab.MIN_INOTIFY_INSTANCES
    limit.write_text("4096\n")
    lab.ensure_inotify(log=lambda _m: None, path=limit)
    assert limit.read_text() == "4096\n"
