"""Glue between the thin CLIs (tasks.py, fabfile/) and the roadie package.

What a task prints passes `clean` on the way out: strings read off a host (journal lines, audit records,
lock holders, release names, command output, error text) reach the operator's terminal without control
characters or escape sequences, which could retitle the window, clear the screen or forge lines.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from invoke.exceptions import Exit, UnexpectedExit

from roadie.core.errors import Interrupted, RoadieError

# Terminal escape sequences, removed whole: CSI (ESC [ or 8-bit 0x9b, parameters, final byte); the string
# commands OSC, DCS, SOS, PM and APC (ESC ] P X ^ _ or 8-bit 0x9d 0x90 0x98 0x9e 0x9f) up to BEL or ST, or to
# the end of the line when unterminated; any other ESC and the byte after it.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
)
# What is left of C0 (but tab and newline), DEL and C1; for one line, tab and newline too.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_BREAKS = re.compile(r"[\t\n\r]+")


def clean(text: str, *, one_line: bool = False) -> str:
    """`text` without terminal control: escape sequences and C0/C1 control characters removed, tab and
    newline kept (one_line: each run of tabs and line breaks becomes one space)."""
    text = _ESCAPES.sub("", text)
    if one_line:
        text = _LINE_BREAKS.sub(" ", text)
    return _CONTROLS.sub("", text)


class CleanStream:
    """A text stream that writes everything through `clean`; anything else goes to the stream it wraps."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(clean(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def clean_output() -> Iterator[None]:
    """Within the block, sys.stdout and sys.stderr strip terminal control from what is written to them."""
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, CleanStream):
        sys.stdout = CleanStream(sys.stdout)
    if not isinstance(sys.stderr, CleanStream):
        sys.stderr = CleanStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def friendly(func: Callable) -> Callable:
    """Turn a RoadieError into one line on stderr and exit status 1, never a traceback; and print nothing
    a host sent that could drive the terminal (everything the task writes, and its error, passes `clean`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with clean_output():
                return func(*args, **kwargs)
        except Interrupted as exc:
            raise Exit(f"interrupted: {clean(str(exc), one_line=True)}", code=Interrupted.exit_code) from None
        except RoadieError as exc:
            raise Exit(f"error: {clean(str(exc), one_line=True)}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        except Exit as exc:
            if isinstance(exc.message, str):
                raise Exit(clean(exc.message), code=exc.code) from None
            raise
        except UnexpectedExit as exc:
            # invoke would print the failed command's output itself, outside this wrapper: clean it here.
            shown = clean(str(exc)).rstrip("\n") if exc.result.hide else None
            raise Exit(shown, code=exc.result.exited or 1) from None

    return wrapper


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table; each cell on one line, without terminal control."""
    rows = [[clean(str(c), one_line=True) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def prefixed(host: str, text: str) -> str:
    """Each line of `text` prefixed with the host name, as all per-host output is."""
    return "\n".join(f"{host}: {line}" for line in text.rstrip("\n").splitlines()) if text.strip() else f"{host}:"


def number(value: Any, flag: str, low: float, high: float, kind: type = int) -> Any:
    """A command-line number within [low, high], else a RoadieError naming the flag."""
    try:
        parsed = kind(value)
    except (TypeError, ValueError):
        unit = "a whole number" if kind is int else "a number"
        raise RoadieError(f"{flag} must be {unit}, got {value!r}") from None
    if not low <= parsed <= high:
        raise RoadieError(f"{flag} must be {low:g}..{high:g}, got {value}")
    return parsed


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-' (a column that does not apply)."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def human_age(seconds: float) -> str:
    """An age in the largest unit that keeps it readable: 90 -> '90 s', 600 -> '10 min', 7200 -> '2 h'."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def confirm(what: str, yes: bool) -> None:
    """Ask the operator to type 'yes' before a change (--yes skips the question); a RoadieError otherwise."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise RoadieError(f"{what}: pass --yes to confirm (no terminal to ask on)")
    answer = input(f"{what}? type 'yes' to go on: ").strip()
    if answer != "yes":
        raise RoadieError("not confirmed; nothing changed")


@dataclass
class Terminal:
    """What a command in roadie/ says to the operator while it runs, and how it asks before it changes
    anything: lines go to stdout (host-prefixed when a host is given); `--yes` answers the question."""

    yes: bool = False

    def say(self, text: str, host: str | None = None) -> None:
        print(prefixed(host, text) if host else text)

    def confirm(self, what: str) -> None:
        confirm(what, self.yes)
