"""The deploy user's HAProxy helper (roles/haproxy/files/roadie_haproxy.py), against a socket that records
what reaches it. The real runtime API answers in the lab (tests/lab/test_least_privilege.py) and molecule."""

import importlib.util
import os
import socket
import threading

import pytest

from roadie.core.paths import ROOT

_SPEC = importlib.util.spec_from_file_location("roadie_haproxy", ROOT / "roles/haproxy/files/roadie_haproxy.py")
helper = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(helper)

STAT = ("# pxname,svname,qcur,qmax,scur,status,weight\n"
        "http,FRONTEND,,,0,OPEN,\nstream,stream1,0,0,0,UP,1\nstream,stream2,0,0,3,UP,1\n"
        "stream,BACKEND,0,0,3,UP,2\nstats,FRONTEND,,,0,OPEN,\n")


@pytest.fixture
def api(tmp_path):
    """A unix socket answering like HAProxy's runtime API; `sent` lists every command line it got."""
    path = str(tmp_path / "admin.sock")
    sent: list[str] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                line = conn.recv(4096).decode().strip()
                sent.append(line)
                conn.sendall((STAT if line == "show stat" else "\n").encode())

    threading.Thread(target=serve, daemon=True).start()
    maintenance = tmp_path / "maintenance"
    maintenance.mkdir()
    settings = {"socket": path, "backends": ["stream"], "maintenance_map": str(maintenance / "mode.map"),
                "maintenance_page": str(maintenance / "page.html")}
    yield settings, sent
    server.close()


def test_drain_and_ready_reach_the_socket_for_a_known_server(api):
    settings, sent = api
    after = helper.main(["state", "stream", "stream2", "drain"], settings)
    helper.main(["weight", "stream", "stream1", "0"], settings)
    assert sent == ["show stat", "set server stream/stream2 state drain", "show stat",
                    "show stat", "set weight stream/stream1 0"]
    assert after == STAT      # a state change answers with the servers' state after it


@pytest.mark.parametrize("argv, refusal", [
    (["state", "stats", "stream1", "drain"], "not one the deploy user may change"),
    (["state", "stream", "stream9", "drain"], "has no server 'stream9'"),
    (["state", "stream", "stream1", "up"], "bad state"),
    (["state", "stream", "stream1\n", "drain"], "bad server name"),
    (["state", "stream", "stream1;shutdown sessions", "drain"], "bad server name"),
    (["weight", "stream", "stream1", "257"], "bad weight"),
    (["weight", "stream", "stream1", "-1"], "bad weight"),
    (["set", "server", "stream/stream1", "addr", "10.0.0.66"], "unknown or malformed"),
    (["raw", "shutdown sessions server stream/stream1"], "unknown or malformed"),
    (["maintenance", "on", "0"], "usage"),
    (["maintenance", "maybe", "120"], "usage"),
    (["stat", "extra"], "unknown or malformed"),
    ([], "usage"),
])
def test_anything_but_the_narrow_requests_is_refused_before_a_change(api, argv, refusal):
    settings, sent = api
    with pytest.raises(helper.Refused, match=refusal):
        helper.main(argv, settings)
    assert all(line == "show stat" for line in sent), sent      # nothing but reads reached the socket


def test_maintenance_writes_root_files_and_flips_the_runtime_map(api, monkeypatch):
    settings, sent = api
    assert helper.main(["maintenance", "on", "300"], settings) == "on\n"
    with open(settings["maintenance_map"]) as handle:
        assert handle.read() == "mode on\nretry_after 300\n"
    assert sent == [f"set map {settings['maintenance_map']} retry_after 300",
                    f"set map {settings['maintenance_map']} mode on"]
    reloads = []
    monkeypatch.setattr(helper.subprocess, "run", lambda argv, **kw: reloads.append(argv))
    assert helper.main(["maintenance-page"], settings, b"<p>back soon</p>\n") == "reloaded\n"
    assert helper.main(["maintenance-page"], settings, b"<p>back soon</p>\n") == "unchanged\n"
    assert reloads == [["/usr/bin/systemctl", "reload", "haproxy.service"]]
    assert oct(os.stat(settings["maintenance_page"]).st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("page, refusal", [
    (b"x" * (64 * 1024 + 1), "more than"), (b"<p>\0</p>", "NUL"), (b"\xff\xfe", "not UTF-8")])
def test_a_page_that_is_too_big_or_not_text_is_refused(api, page, refusal):
    settings, _ = api
    with pytest.raises(helper.Refused, match=refusal):
        helper.main(["maintenance-page"], settings, page)
    assert not os.path.exists(settings["maintenance_page"])


def test_a_link_planted_at_the_page_is_never_followed(api, tmp_path):
    # Issue 13, finding 5: the page swapped for a link to a root-only file HAProxy would serve.
    settings, _ = api
    secret = tmp_path / "ssh_host_ed25519_key"
    secret.write_text("PRIVATE\n")
    os.symlink(secret, settings["maintenance_page"])
    with pytest.raises(OSError):
        helper.write_root_file(settings["maintenance_page"], b"<p>x</p>")
    assert secret.read_text() == "PRIVATE\n"


def test_a_directory_others_can_write_or_a_linked_directory_is_refused(api, tmp_path):
    settings, _ = api
    directory = os.path.dirname(settings["maintenance_page"])
    os.chmod(directory, 0o770)  # noqa: S103 - group-writable on purpose: the helper must refuse it
    with pytest.raises(helper.Refused, match="can be changed by another account"):
        helper.write_root_file(settings["maintenance_page"], b"<p>x</p>")
    os.chmod(directory, 0o700)
    os.symlink(directory, tmp_path / "linked")
    with pytest.raises(helper.Refused, match="not a directory"):
        helper.write_root_file(str(tmp_path / "linked" / "page.html"), b"<p>x</p>")
