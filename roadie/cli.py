"""Glue between the thin CLIs (tasks.py, fabfile.py) and the roadie package."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from invoke.exceptions import Exit

from roadie.errors import RoadieError


def friendly(func: Callable) -> Callable:
    """Turn a RoadieError into one line on stderr and exit status 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RoadieError as exc:
            raise Exit(f"error: {exc}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    rows = [[str(c) for c in row] for row in rows]
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
