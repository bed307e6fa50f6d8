"""HTTP Range for one representation (RFC 9110, section 14), single byte ranges only.

What `parse_range(header, size)` answers:
- no header, another unit than `bytes`, or more than one range (a comma): None, send 200 and the
  whole body (a server may ignore a Range header; players ask for one range);
- `bytes=a-b`, `bytes=a-`, `bytes=-n` that select at least one byte: a ByteRange, send 206;
  `b` past the end is clamped to the last byte, a suffix longer than the body selects it all;
- anything else under `bytes=` raises RangeNotSatisfiable, send 416 with `Content-Range: bytes */size`:
  a start at or past the end, `-0`, any range of an empty body, b < a, no digits, numbers of more
  than 19 digits, any other character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT = re.compile(r"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=(.*)", re.ASCII | re.DOTALL)
_SPEC = re.compile(r"[ \t]*(?:([0-9]{1,19})-([0-9]{1,19})?|-([0-9]{1,19}))[ \t]*", re.ASCII)


class RangeNotSatisfiable(ValueError):
    """The Range header is malformed or selects no byte: answer 416."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes start..end of a body of `size` bytes, both ends inclusive."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The byte range a Range header asks of a `size`-byte body; None for the whole body (see module doc)."""
    if size < 0:
        raise ValueError("size must be >= 0")
    if header is None:
        return None
    unit = _UNIT.fullmatch(header)
    if unit is None:
        raise RangeNotSatisfiable("malformed Range header")
    if unit.group(1).lower() != "bytes":
        return None
    spec = unit.group(2)
    if "," in spec:
        return None
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise RangeNotSatisfiable("malformed byte range")
    first, last, suffix = match.groups()
    if suffix is not None:
        count = int(suffix)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return ByteRange(max(size - count, 0), size - 1, size)
    start = int(first)
    end = size - 1 if last is None else int(last)
    if last is not None and end < start:
        raise RangeNotSatisfiable("range ends before it starts")
    if start >= size:
        raise RangeNotSatisfiable("range starts past the end")
    return ByteRange(start, min(end, size - 1), size)
