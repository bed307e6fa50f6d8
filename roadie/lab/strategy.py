"""The Ansible strategy of every Roadie run, and the environment that runs ansible with it.

Every run gets the strategy chosen by `select_strategy`: Mitogen's `mitogen_linear` (one persistent
Python per host instead of one interpreter start per task) when the pinned Mitogen loads and supports
the installed ansible-core, else Ansible's built-in `linear` with one warning line. ansible.cfg itself
names no strategy, so a hand-run `ansible-playbook` always works with the built-in one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from roadie.core.paths import ROOT

# The Mitogen release pinned in pyproject.toml and the ansible-core releases it supports. Mitogen
# itself checks only the lower bound; the upper one is the newest ansible-core it was released for
# and tested with here. A newer ansible-core falls back to the built-in strategy until both move.
MITOGEN_VERSION = "0.3.54"
MITOGEN_ANSIBLE_CORE = ((2, 10), (2, 19))
# ROADIE_MITOGEN=0 chooses the built-in strategy on purpose (comparisons, bisecting a problem).
MITOGEN_SWITCH = "ROADIE_MITOGEN"


@dataclass(frozen=True)
class Strategy:
    """The Ansible strategy for a run and the environment that selects it."""

    name: str
    plugin_dir: str | None = None
    warning: str | None = None

    def env(self) -> dict[str, str]:
        if self.plugin_dir is None:
            return {"ANSIBLE_STRATEGY": self.name}
        return {"ANSIBLE_STRATEGY": self.name, "ANSIBLE_STRATEGY_PLUGINS": self.plugin_dir}


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def _switched_off(switch: str | None) -> bool:
    return (switch or "").strip().lower() in ("0", "no", "false", "off")


def select_strategy(ansible_core: str | None, mitogen: str | None, plugin_dir: str | None, *,
                    load_error: str | None = None, switch: str | None = None) -> Strategy:
    """Mitogen's linear strategy when everything lines up; the built-in one with a reason otherwise.

    ansible_core/mitogen are the installed versions (None: not installed), plugin_dir is where
    mitogen_linear.py was found, load_error why importing it failed, switch the ROADIE_MITOGEN value.
    """
    builtin = "linear"
    if _switched_off(switch):
        return Strategy(builtin)  # chosen, not a fallback: no warning
    prefix = "warning: Mitogen not used"
    suffix = "running with Ansible's built-in linear strategy"
    if mitogen is None:
        return Strategy(builtin, warning=f"{prefix} (not installed; run ./bin/bootstrap); {suffix}")
    if mitogen != MITOGEN_VERSION:
        return Strategy(builtin, warning=f"{prefix} (mitogen {mitogen} installed, Roadie is tested with "
                                         f"{MITOGEN_VERSION}; run ./bin/bootstrap); {suffix}")
    core = _version_tuple(ansible_core or "")
    low, high = MITOGEN_ANSIBLE_CORE
    if len(core) < 2 or not low <= core[:2] <= high:
        supported = f"{low[0]}.{low[1]}-{high[0]}.{high[1]}"
        return Strategy(builtin, warning=f"{prefix} (mitogen {mitogen} supports ansible-core {supported}, "
                                         f"installed: {ansible_core or 'none'}); {suffix}")
    if load_error is not None or plugin_dir is None:
        reason = load_error or "its strategy plugin is missing"
        return Strategy(builtin, warning=f"{prefix} (it does not load: {reason}); {suffix}")
    return Strategy("mitogen_linear", plugin_dir)


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def strategy() -> Strategy:
    """The strategy for this controller: the installed versions, and whether Mitogen's plugin loads."""
    switch = os.environ.get(MITOGEN_SWITCH)
    core, mitogen = _installed("ansible-core"), _installed("mitogen")
    plugin_dir, load_error = None, None
    if mitogen is not None and not _switched_off(switch):
        try:
            plugin = importlib.import_module("ansible_mitogen.plugins.strategy.mitogen_linear")
            plugin_dir = str(Path(plugin.__file__).resolve().parent)
        except Exception as exc:  # any import failure means "does not load": fall back, say why
            load_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return select_strategy(core, mitogen, plugin_dir, load_error=load_error, switch=switch)


def ansible_env(extra: dict[str, str] | None = None, *, warn: bool = True) -> dict[str, str]:
    """The environment for any ansible/ansible-playbook run: Roadie's ansible.cfg and its strategy."""
    chosen = strategy()
    if chosen.warning and warn:
        print(chosen.warning, file=sys.stderr, flush=True)
    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_FORCE_COLOR": "0",
            **chosen.env(), **(extra or {})}
