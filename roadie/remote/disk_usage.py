"""`fab disk`'s probe: the size, use and room of every real filesystem a host has mounted.

roadie.status.ops.disks runs this on every host as the deploy user, with roadie.remote.command:  disk_usage.py
It reads /proc/self/mounts, skips pseudo and read-only image filesystems (proc, tmpfs, cgroup, squashfs,
...), mounts it cannot statvfs, empty ones and a filesystem seen already (bind mounts), and prints one
JSON list of {"mount", "total", "used", "avail" (bytes an unprivileged user may still write), "pct"
(used of used + avail, as df computes it)}. It changes nothing.

Standard library only: it runs on the host's python3.
"""

from __future__ import annotations

import json
import os
import sys

MOUNTS = "/proc/self/mounts"
SKIPPED = ("proc", "sysfs", "devpts", "tmpfs", "devtmpfs", "cgroup", "cgroup2", "mqueue", "securityfs",
           "debugfs", "tracefs", "pstore", "bpf", "configfs", "fusectl", "hugetlbfs", "autofs", "binfmt_misc",
           "nsfs", "ramfs", "rpc_pipefs", "efivarfs", "fuse.lxcfs", "squashfs")


def usage(mounts: str = MOUNTS) -> list[dict]:
    """One entry per real filesystem in the mount table `mounts`, in its order."""
    seen, out = set(), []
    with open(mounts) as table:
        lines = table.readlines()
    for line in lines:
        _device, mount, fstype = line.split()[:3]
        if fstype in SKIPPED:
            continue
        try:
            st = os.statvfs(mount)
        except OSError:
            continue
        if st.f_blocks == 0 or (st.f_fsid, st.f_blocks) in seen:
            continue
        seen.add((st.f_fsid, st.f_blocks))
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        used = total - st.f_bfree * st.f_frsize
        out.append({"mount": mount, "total": total, "used": used, "avail": free,
                    "pct": round(100.0 * used / (used + free), 1) if used + free else 0.0})
    return out


def main(argv: list[str]) -> int:
    print(json.dumps(usage()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
