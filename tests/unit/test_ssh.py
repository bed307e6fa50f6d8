"""roadie.core.ssh's host keys: each connection trusts exactly its host's known_hosts entries."""

import os

import paramiko
import pytest

from roadie.core import ssh
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host


def _key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate()


def _line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def _host(known_hosts, address="10.0.0.1", port=22) -> Host:
    return Host(name="h", address=address, port=port, user="deploy", known_hosts=known_hosts)


def _trusted(conn) -> dict[str, dict[str, str]]:
    return {name: {t: k.get_base64() for t, k in keys.items()} for name, keys in conn.client.get_host_keys().items()}


def test_a_connection_trusts_only_its_own_hosts_keys(tmp_path):
    one, two, other_port = _key(), _key(), _key()
    known = tmp_path / "known_hosts"
    known.write_text(_line("10.0.0.1", one) + _line("10.0.0.2", two) + _line("[10.0.0.1]:2222", other_port))
    assert _trusted(ssh.HostConnection(_host(known))) == {"10.0.0.1": {one.get_name(): one.get_base64()}}
    assert _trusted(ssh.HostConnection(_host(known, port=2222))) == {
        "[10.0.0.1]:2222": {other_port.get_name(): other_port.get_base64()}}
    # A host the file does not list gets no key at all: RejectPolicy refuses whatever it offers.
    assert _trusted(ssh.HostConnection(_host(known, address="10.0.0.9"))) == {}
    assert isinstance(ssh.HostConnection(_host(known)).client._policy, paramiko.RejectPolicy)


def test_a_changed_known_hosts_file_is_read_again(tmp_path):
    old, new = _key(), _key()
    known = tmp_path / "known_hosts"
    known.write_text(_line("10.0.0.1", old))
    assert _trusted(ssh.HostConnection(_host(known)))["10.0.0.1"] == {old.get_name(): old.get_base64()}
    known.write_text(_line("10.0.0.1", new))
    stat = known.stat()
    os.utime(known, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))   # even within one mtime tick
    assert _trusted(ssh.HostConnection(_host(known)))["10.0.0.1"] == {new.get_name(): new.get_base64()}


def test_a_missing_known_hosts_file_is_one_line(tmp_path):
    with pytest.raises(RoadieError, match="known_hosts file .* is missing") as caught:
        ssh.HostConnection(_host(tmp_path / "nowhere"))
    assert "\n" not in str(caught.value)


class _RefusingServer(paramiko.ServerInterface):
    """An SSH server that knows no account: every public key is refused."""

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_FAILED


def test_a_refused_account_is_told_apart_from_an_unreachable_host(tmp_path):
    # inv provision's first run of a fleet relies on this: no deploy account yet means no lease to take.
    import socket
    import threading

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    host_key, client_key = _key(), ed25519.Ed25519PrivateKey.generate()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        sock, _ = listener.accept()
        transport = paramiko.Transport(sock)
        transport.add_server_key(host_key)
        transport.start_server(server=_RefusingServer())
        transport.accept(5)
        transport.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    known = tmp_path / "known_hosts"
    known.write_text(_line(f"[127.0.0.1]:{port}", host_key))
    key_file = tmp_path / "id_ed25519"  # the lab's kind of key, in OpenSSH's format
    key_file.write_bytes(client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()))
    host = Host(name="lb1", address="127.0.0.1", port=port, user="deploy", known_hosts=known, key_file=key_file)
    with pytest.raises(ssh.AuthenticationFailed, match="lb1 .*authentication failed for user deploy"):
        ssh.connect(host)
    server.join(5)
    listener.close()
    # Nothing is listening any more: a plain RoadieError, not an authentication failure.
    with pytest.raises(RoadieError, match="unreachable") as refused:
        ssh.connect(host)
    assert not isinstance(refused.value, ssh.AuthenticationFailed)


def test_an_in_memory_request_is_read_in_one_piece(tmp_path):
    # Invoke reads a non-terminal stream one byte per 10 ms loop: a 6 KB staging request took 60 s.
    import io

    known = tmp_path / "known_hosts"
    known.write_text(_line("10.0.0.1", _key()))
    conn = ssh.HostConnection(_host(known))
    runner = conn.config.runners.remote(context=conn)
    assert isinstance(runner, ssh.WholeInputRemote)
    request = io.StringIO("x" * 6000 + "\n")
    assert runner.read_our_stdin(request) == "x" * 6000 + "\n"
    assert runner.read_our_stdin(request) == ""               # EOF: Invoke closes the program's stdin
    runner.encoding = "utf-8"                                  # set by Invoke when a command runs
    assert runner.read_our_stdin(io.BytesIO(b"secret\n")) == "secret\n"
