"""Helpers shared by the benchmarks: timing, tables, results files."""

from __future__ import annotations

import json
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(func: Callable[[], object]) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def median_of(func: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    samples = [timed(func) for _ in range(runs)]
    return statistics.median(samples), samples


def machine() -> dict:
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"cpus": int(cpu), "mem_gib": round(int(mem) / 1024 / 1024, 1), "python": platform.python_version(),
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def report(name: str, rows: list[tuple[str, str]], data: dict) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{name}  ({machine()['cpus']} cores, {machine()['date']})")
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"machine": machine(), **data}, indent=2, sort_keys=True) + "\n")
    print(f"  (written to {out.relative_to(RESULTS.parent.parent)})")


_PROFILE_LINE = re.compile(r"^(?P<task>.+?) -{2,} (?P<seconds>\d+\.\d+)s$")


def profile_lines(output: str, limit: int = 15) -> list[str]:
    """The ansible.posix.profile_tasks summary lines ("role : task ---- 1.23s"; a long name over 10 s gets
    only two dashes) after the recap."""
    lines = [line.strip() for line in output.split("PLAY RECAP", 1)[-1].splitlines()]
    return [line for line in lines if _PROFILE_LINE.match(line)][:limit]
