"""Files streamed from one database host to another through this controller, over raw SSH channels.

tar runs as postgres on both ends; the bytes pass through the controller (the hosts need no route or
key to each other), and each side's failure is one line naming its host.
"""

from __future__ import annotations

import shlex
import threading
from typing import TYPE_CHECKING

from roadie.core.errors import RoadieError
from roadie.db import client
from roadie.db.client import AS_POSTGRES

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection


def stream_tar(src: HostConnection, src_dir: str, names: list[str], dst: HostConnection, dst_dir: str) -> int:
    """tar the files on `src` and unpack them on `dst`, through this controller; bytes moved."""
    src_chan = src.client.get_transport().open_session()
    dst_chan = dst.client.get_transport().open_session()
    files = " ".join(shlex.quote(n) for n in names)
    src_chan.exec_command(f"{AS_POSTGRES}tar -C {shlex.quote(src_dir)} -cf - -- {files}")
    dst_chan.exec_command(f"{AS_POSTGRES}tar -C {shlex.quote(dst_dir)} --no-same-owner -xf -")
    moved = 0
    src_err: list[bytes] = []

    def drain_stderr() -> None:
        while True:
            data = src_chan.recv_stderr(65536)
            if not data:
                return
            src_err.append(data)

    reader = threading.Thread(target=drain_stderr, daemon=True)
    reader.start()
    while True:
        data = src_chan.recv(1 << 20)
        if not data:
            break
        dst_chan.sendall(data)
        moved += len(data)
    dst_chan.shutdown_write()
    src_status = src_chan.recv_exit_status()
    dst_status = dst_chan.recv_exit_status()
    reader.join(10)
    dst_err = b""
    while dst_chan.recv_stderr_ready():
        dst_err += dst_chan.recv_stderr(65536)
    src_chan.close()
    dst_chan.close()
    if src_status != 0:
        detail = b"".join(src_err).decode(errors="replace").strip().splitlines()[-1:] or [f"exit {src_status}"]
        raise RoadieError(f"{client.host_name(src)}: reading the backup files failed: {detail[0]}")
    if dst_status != 0:
        detail = dst_err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {dst_status}"]
        raise RoadieError(f"{client.host_name(dst)}: writing the copy failed: {detail[0]}")
    return moved

