"""WAL arithmetic: LSNs as byte positions, segment names, the segments a restore needs (pure, unit-tested)."""

from __future__ import annotations

import re

from roadie.core import contract
from roadie.core.errors import RoadieError

WAL_DIR = contract.PG_WAL_ARCHIVE_DIR
WAL_SEGMENT_SIZE = 16 * 1024 * 1024
_SEGMENT = re.compile(r"[0-9A-F]{24}")
_LSN = re.compile(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}")


def parse_lsn(text: str) -> int:
    """A PostgreSQL LSN like 0/3000148 as a byte position."""
    text = (text or "").strip().upper()
    if not _LSN.fullmatch(text):
        raise RoadieError(f"not a WAL position: {text!r}")
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def segment_name(timeline: int, position: int, segment_size: int = WAL_SEGMENT_SIZE) -> str:
    """The WAL file name holding byte `position` on `timeline` (as pg_walfile_name would name it)."""
    segno = position // segment_size
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def wal_needed(start_wal: str, restore_lsn: str, archived: list[str]) -> list[str]:
    """Archived files a restore of a backup starting at `start_wal` needs to reach `restore_lsn`:
    every segment of the timeline from start_wal to the one holding the restore point, plus history
    files. RoadieError naming the first missing segment."""
    if not _SEGMENT.fullmatch(start_wal):
        raise RoadieError(f"bad first WAL segment {start_wal!r} in the backup's roadie-backup.json")
    timeline = int(start_wal[:8], 16)
    first = int(start_wal[8:16], 16) * (0x100000000 // WAL_SEGMENT_SIZE) + int(start_wal[16:], 16)
    # pg_create_restore_point returns the end of its record; the record itself ends in the segment before
    # a segment boundary.
    last_name = segment_name(timeline, parse_lsn(restore_lsn) - 1)
    last = int(last_name[8:16], 16) * (0x100000000 // WAL_SEGMENT_SIZE) + int(last_name[16:], 16)
    if last < first:
        raise RoadieError(f"restore point {restore_lsn} lies before the backup's first segment {start_wal}")
    present = set(archived)
    needed = []
    per_id = 0x100000000 // WAL_SEGMENT_SIZE
    for segno in range(first, last + 1):
        name = f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"
        if name not in present:
            raise RoadieError(f"WAL segment {name} is missing from the primary's archive {WAL_DIR}")
        needed.append(name)
    needed += sorted(n for n in present if n.endswith(".history"))
    return needed

