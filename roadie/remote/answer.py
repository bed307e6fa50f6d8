"""How a host program answers: its result on stdout, or one `refused:` or `failed:` line on stderr.

`remote.command` sends this text ahead of any program that imports it, so the host gets one
self-contained script while the program and its tests import it like any other module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

FAILED = 3      # the exit status of a refusal or a failure


def answer(produce: Callable[[], str], refusal: type[Exception], os_errors: bool = True) -> int:
    """Print what `produce` returns and exit 0; a `refusal` (and, unless told not to, an OSError) is one
    line on stderr and FAILED."""
    caught: tuple[type[Exception], ...] = (refusal, OSError) if os_errors else (refusal,)
    try:
        print(produce())
    except caught as exc:
        said = f"refused: {exc}" if isinstance(exc, refusal) else f"failed: {type(exc).__name__}: {exc}"
        print(said, file=sys.stderr)
        return FAILED
    return 0
