"""The failover's env-file rewriter (roles/streaming/files/stream_env.py), run here on a real file."""

import importlib.util
import os
import stat

import pytest

from roadie.core.paths import ROOT

_SPEC = importlib.util.spec_from_file_location("stream_env", ROOT / "roles/streaming/files/stream_env.py")
stream_env = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(stream_env)

URL = "STREAM_DATABASE_URL=postgresql://stream:p%2Fw%40x@10.0.0.20:5432,10.0.0.21:5432/stream?connect_timeout=2"


def test_the_new_primary_goes_first_and_the_rest_is_kept():
    swapped = stream_env.reorder_database_url(URL + "&target_session_attrs=read-write", "10.0.0.21")
    assert swapped == ("STREAM_DATABASE_URL=postgresql://stream:p%2Fw%40x@10.0.0.21:5432,10.0.0.20:5432/stream"
                       "?connect_timeout=2&target_session_attrs=read-write")
    assert stream_env.reorder_database_url(swapped, "10.0.0.21") == swapped      # idempotent
    ipv6 = "STREAM_DATABASE_URL=postgresql://u:pw@[fd00::1]:5432,[fd00::2]:5432/db"
    assert stream_env.reorder_database_url(ipv6, "fd00::2").endswith(
        "@[fd00::2]:5432,[fd00::1]:5432/db?target_session_attrs=read-write")


def test_a_host_a_failover_forgot_comes_back_first_only_from_the_roles_list():
    # After a failover to db2 forgot db1, the failback puts db1 first again: it is one of the role's hosts.
    forgotten = "STREAM_DATABASE_URL=postgresql://u:pw@10.0.0.21:5432/stream?connect_timeout=2"
    back = stream_env.reorder_database_url(forgotten, "10.0.0.20", ("10.0.0.20", "10.0.0.21"))
    assert back == ("STREAM_DATABASE_URL=postgresql://u:pw@10.0.0.20:5432,10.0.0.21:5432/stream"
                    "?connect_timeout=2&target_session_attrs=read-write")
    with pytest.raises(stream_env.Refused, match=r"10.9.9.9 is not one of .* or the role's \(10.0.0.20, 10.0.0.21\)"):
        stream_env.reorder_database_url(forgotten, "10.9.9.9", ("10.0.0.20", "10.0.0.21"))
    ipv6 = "STREAM_DATABASE_URL=postgresql://u:pw@[fd00::2]:5432/db"
    assert stream_env.reorder_database_url(ipv6, "fd00::1", ("fd00::1",)).endswith(
        "@[fd00::1]:5432,[fd00::2]:5432/db?target_session_attrs=read-write")


@pytest.mark.parametrize("line, first, expected", [
    (URL, "10.9.9.9", "is not one of the database hosts"),              # never steered to another server
    (URL, "10.0.0.2", "is not one of the database hosts"),              # no prefix matches
    ("STREAM_REDIS_URL=redis://x", "10.0.0.21", "not a STREAM_DATABASE_URL"),
    ("STREAM_DATABASE_URL=nourl", "10.0.0.21", "has no scheme"),
])
def test_refusals(line, first, expected):
    with pytest.raises(stream_env.Refused, match=expected):
        stream_env.reorder_database_url(line, first)


def test_the_file_is_replaced_with_its_mode(tmp_path):
    env = tmp_path / "stream.env"
    env.write_text(f"STREAM_RELEASE=x\n{URL}\nSTREAM_REDIS_URL=redis://c\n")
    os.chmod(env, 0o600)
    assert stream_env.use_database(str(env), "10.0.0.21", owner=os.getuid()) is True
    text = env.read_text()
    assert "@10.0.0.21:5432,10.0.0.20:5432/" in text and text.startswith("STREAM_RELEASE=x\n")
    assert text.endswith("STREAM_REDIS_URL=redis://c\n")
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert stream_env.use_database(str(env), "10.0.0.21", owner=os.getuid()) is False
    assert [p.name for p in tmp_path.iterdir()] == ["stream.env"]


def _env(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    env = shared / "stream.env"
    env.write_text(f"{URL}\n")
    os.chmod(env, 0o600)
    return shared, env


def test_a_link_planted_at_the_env_file_is_never_followed(tmp_path):
    # The attack of issue 13: the env file swapped for a link to a root file the helper would rewrite.
    shared, env = _env(tmp_path)
    victim = tmp_path / "stream-task"
    victim.write_text("#!/bin/sh\necho root's own\n")
    env.unlink()
    env.symlink_to(victim)
    with pytest.raises(stream_env.Refused, match="is a link"):
        stream_env.use_database(str(env), "10.0.0.21", owner=os.getuid())
    assert victim.read_text() == "#!/bin/sh\necho root's own\n"
    assert sorted(p.name for p in shared.iterdir()) == ["stream.env"]


def test_a_directory_link_above_the_env_file_is_refused(tmp_path):
    shared, env = _env(tmp_path)
    (tmp_path / "elsewhere").symlink_to(shared)
    with pytest.raises(stream_env.Refused, match="elsewhere is a link"):
        stream_env.use_database(str(tmp_path / "elsewhere" / "stream.env"), "10.0.0.21", owner=os.getuid())


@pytest.mark.parametrize("mode", [0o770, 0o757])
def test_a_directory_another_account_can_write_is_refused(tmp_path, mode):
    shared, env = _env(tmp_path)
    os.chmod(shared, mode)
    with pytest.raises(stream_env.Refused, match="can be changed by another account"):
        stream_env.use_database(str(env), "10.0.0.21", owner=os.getuid())
    assert "10.0.0.20:5432,10.0.0.21" in env.read_text()


def test_a_file_of_another_owner_is_refused(tmp_path):
    shared, env = _env(tmp_path)
    with pytest.raises(stream_env.Refused, match="can be changed by another account"):
        stream_env.use_database(str(env), "10.0.0.21", owner=os.getuid() + 1)


def test_a_failed_over_primary_is_removed_from_the_list_never_the_last_host(tmp_path):
    shared, env = _env(tmp_path)
    assert stream_env.use_database(str(env), "10.0.0.21", owner=os.getuid()) is True
    assert stream_env.forget_database(str(env), "10.0.0.20", owner=os.getuid()) is True
    assert "@10.0.0.21:5432/stream?" in env.read_text() and "10.0.0.20" not in env.read_text()
    assert stream_env.forget_database(str(env), "10.0.0.20", owner=os.getuid()) is False     # already gone
    with pytest.raises(stream_env.Refused, match="the only database host"):
        stream_env.forget_database(str(env), "10.0.0.21", owner=os.getuid())
    assert "@10.0.0.21:5432/stream?" in env.read_text()
