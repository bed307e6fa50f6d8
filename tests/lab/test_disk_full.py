"""A stream host without room for a release: `fab deploy` refuses before anything is uploaded (issue 14).

stream3's releases directory gets a small tmpfs mounted over it (root, through the `conns` fixture; lab
containers run with CAP_SYS_ADMIN and seccomp unconfined, and this kernel has no AppArmor to deny the
mount). The mount hides the releases there, so `current` points into the hidden directory for the
duration: harmless, since nothing may be switched. It is unmounted whatever happens.
"""

import re
import shlex
import time

from roadie.deploy import release, stream_host
from tests.lab.fabrun import fab, one_line_error
from tests.lab.releases import build_variant, currents

SHORT_HOST = "stream3"
TMPFS_SIZE = 8 * 1024 * 1024   # far below any release: artifact, payload and tree alone are over 15 MiB
RELEASES = str(stream_host.RELEASES)
VENVS = str(stream_host.VENVS)


def _entries(conn, path: str) -> list[str]:
    """Every name in `path`, dot files included."""
    return sorted(conn.run(f"ls -A {shlex.quote(path)}", hide=True, in_stream=False).stdout.split())


def _free(conn, path: str) -> int:
    script = "import os, sys; s = os.statvfs(sys.argv[1]); print(s.f_bavail * s.f_frsize)"
    return int(conn.run(f"python3 -c {shlex.quote(script)} {shlex.quote(path)}", hide=True,
                        in_stream=False).stdout.strip())


def _mounted(conn, path: str) -> bool:
    return conn.run(f"mountpoint -q {shlex.quote(path)}", hide=True, warn=True, in_stream=False).exited == 0


def test_a_host_without_room_stops_the_release_before_any_upload_anywhere(stack, conns, tmp_path):
    fleet = stack["fleet"]
    names = [h.name for h in fleet.stream]
    assert SHORT_HOST in names
    before = currents(fleet)
    listed = {n: (_entries(conns(n), RELEASES), _entries(conns(n), VENVS)) for n in names}
    artifact = build_variant(tmp_path, f"lab-full-{int(time.time())}")
    release_id = release.verify(artifact).release_id
    root = conns(SHORT_HOST)
    assert not _mounted(root, RELEASES), f"{RELEASES} on {SHORT_HOST} is a mount point already (a previous run?)"
    uid, gid, mode = root.run(f"stat -c '%u %g %a' {RELEASES}", hide=True, in_stream=False).stdout.split()
    mount = root.run(f"mount -t tmpfs -o size={TMPFS_SIZE},uid={uid},gid={gid},mode={mode} roadie-disk-full "
                     f"{RELEASES}", hide=True, warn=True, in_stream=False)
    assert mount.exited == 0, f"cannot mount a tmpfs on {SHORT_HOST}: {mount.stderr.strip()}"
    try:
        free = _free(root, RELEASES)
        assert free <= TMPFS_SIZE
        result = fab("deploy", "--artifact", str(artifact), "--yes")
        line = one_line_error(result)
        found = re.search(rf"not enough space for release {re.escape(release_id)} on {SHORT_HOST}:{RELEASES}: "
                          r"[0-9.]+ [KMG]?i?B \(([0-9]+) bytes\) free, [0-9.]+ [KMG]?i?B \(([0-9]+) bytes\) needed"
                          r"; nothing uploaded", line)
        assert found, line
        said_free, said_needed = int(found.group(1)), int(found.group(2))
        assert said_free == free
        # Needed covers at least the upload, the payload extracted beside it and the unpacked tree.
        assert said_needed > artifact.stat().st_size * 2 > 0 and said_needed > free
        assert all(n not in line for n in names if n != SHORT_HOST), line
        assert "staged" not in result.stdout
        assert _entries(root, RELEASES) == [], "something was written into the small filesystem"
    finally:
        root.run(f"umount {RELEASES} || umount -l {RELEASES}", hide=True, warn=True, in_stream=False)
    assert not _mounted(root, RELEASES)
    assert currents(fleet) == before
    for n in names:
        assert (_entries(conns(n), RELEASES), _entries(conns(n), VENVS)) == listed[n], n
