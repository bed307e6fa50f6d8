"""Releases for the lab tests: variants of the working tree's app built here, and what each stream host runs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from roadie.core.fleet import Fleet
from roadie.core.paths import ROOT
from roadie.deploy import builder, deploy


def build_variant(tmp_path: Path, release_id: str, patch: Callable[[Path], None] | None = None,
                  wheels: Path | None = None) -> Path:
    """A release built from a copy of app/ (inside the checkout, for the git sha), optionally patched."""
    app = ROOT / "build" / "variants" / release_id / "app"
    shutil.rmtree(app.parent, ignore_errors=True)
    shutil.copytree(ROOT / "app", app, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if patch:
        patch(app)
    return builder.build(tmp_path / "out", release_id, app_dir=app, wheels=wheels).path


def break_health(app: Path) -> None:
    """Patch for build_variant: the release reports a release id that is not its own, so its health gate
    can never pass."""
    init = app / "streamsvc" / "__init__.py"
    init.write_text(init.read_text() + "\nimport os as _os\n\n_os.environ['STREAM_RELEASE_ID'] = 'broken'\n")


def currents(fleet: Fleet) -> dict[str, str | None]:
    """stream host -> the release its `current` points at."""
    return {s.host: s.current for s in deploy.host_releases(fleet)}
