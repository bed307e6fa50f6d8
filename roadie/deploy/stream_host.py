"""What Roadie does on one stream host over SSH: its releases, staging one, switching `current`, migrations.

Layout (DESIGN.md): /srv/stream/releases/<id>/ (app, venv, manifest.json), /srv/stream/shared/,
/srv/stream/current -> releases/<id>, switched atomically (a temporary link renamed over it).
The room a release needs there: host_space.py; the service's restart and health gate: stream_service.py.
"""

from __future__ import annotations

import io
import json
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from roadie import remote
from roadie.core import contract
from roadie.core.errors import RoadieError
from roadie.deploy.release import Manifest, check_release_id
from roadie.deploy.wheelhouse import Dependencies

if TYPE_CHECKING:
    from roadie.core.ssh import HostConnection

BASE = contract.STREAM_ROOT
RELEASES = contract.STREAM_RELEASES
VENVS = contract.STREAM_VENVS     # shared venvs, one per dependency set (wheelhouse.dependencies)
CURRENT = contract.STREAM_CURRENT
PREVIOUS = BASE / "previous"
ENV_FILE = contract.STREAM_ENV_FILE
TASK_WRAPPER = "/usr/local/sbin/stream-task"   # roles/streaming: migrate and seed, arguments checked
COMPLETE_MARK = ".roadie-complete"
ALREADY_STAGED = "already staged"   # what stage_release.py prints when the release is complete there already
STAGE_PROGRAM = "stage_release.py"   # roadie/remote/: unpacks and checks a release on the host
LIST_PROGRAM = "list_releases.py"    # roadie/remote/: current, previous and the complete releases
PRUNE_PROGRAM = "prune_releases.py"  # roadie/remote/: removes old releases and the venvs left unused


def quoted(value: object) -> str:
    """`value` quoted for a host's shell."""
    return shlex.quote(str(value))


def run(conn: HostConnection, command: str, *, what: str, timeout: int | None = 300):
    """Run `command` on the host; a non-zero exit is one RoadieError line naming the host and `what`."""
    result = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
    if result.exited != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RoadieError(f"{host_name(conn)}: {what} failed: {detail[0]}")
    return result


def host_name(conn: HostConnection) -> str:
    host = getattr(conn, "inventory_host", None)
    return host.name if host else str(getattr(conn, "host", "host"))


@dataclass
class Releases:
    """The releases present on one host."""

    host: str
    current: str | None
    previous: str | None
    kept: list[str] = field(default_factory=list)   # complete releases, oldest first

    def as_dict(self) -> dict:
        return {"host": self.host, "current": self.current, "previous": self.previous, "kept": self.kept}


def releases(conn: HostConnection) -> Releases:
    """current, previous and the complete releases kept on the host."""
    out = run(conn, remote.command(LIST_PROGRAM, BASE), what="listing releases", timeout=60)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Releases(host_name(conn), data["current"], data["previous"], data["kept"])


def stage(conn: HostConnection, artifact_path: str, manifest: Manifest,
          deps: Dependencies | None = None) -> bool:
    """Upload-side done: unpack what `manifest` (verified on the controller) lists, check it, give it a
    venv. False if already staged.

    The host program (roadie/remote/stage_release.py) gets the manifest on stdin and trusts nothing in
    the tarball: GNU tar extracts only the listed members, the tree must match their sha256, and pip
    installs in hash-checking mode from the release's own wheels. A refusal leaves nothing of the release.
    With `deps`, the venv is the host's shared one for that dependency set (VENVS/<key>-py<version>,
    built once, linked as the release's `venv`; the app runs from the release's own `app/`, which
    gunicorn's `chdir` and stream-task's working directory put first on sys.path). Without it, or on
    a host without VENVS, the release builds its own venv in place.
    """
    release_id = check_release_id(manifest.release_id)
    # No separate check for a complete release: the host program finds it, removes the upload and says so.
    request = json.dumps({"artifact": str(artifact_path), "releases": str(RELEASES), "venvs": str(VENVS),
                          "manifest": manifest.to_json().decode(), "key": deps.key if deps else "",
                          "app_requirement": deps.app_requirement if deps else ""})
    result = conn.run(remote.command(STAGE_PROGRAM), hide=True, warn=True, in_stream=io.StringIO(request + "\n"),
                      timeout=600)
    if result.exited != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RoadieError(f"{host_name(conn)}: staging {release_id} failed: {detail[0]}")
    return ALREADY_STAGED not in result.stdout


def switch(conn: HostConnection, release_id: str) -> str | None:
    """Point `current` at a staged release atomically; `previous` keeps the one it replaced.

    Root owns /srv/stream, so the switch goes through the role's checked wrapper (`stream-task switch`),
    which checks the id and the completion mark and renames a fresh link over `current`.
    """
    check_release_id(release_id)
    out = run(conn, f"sudo -n {TASK_WRAPPER} switch {quoted(release_id)}", what=f"switching to {release_id}",
               timeout=60)
    old = out.stdout.strip()
    return old or None


def migrate(conn: HostConnection, release_id: str) -> str:
    """Run the release's migrations once, as the service user with the service's environment.

    Through the role's checked wrapper, the one thing sudo lets the deploy user run for it.
    """
    return run(conn, f"sudo -n {TASK_WRAPPER} migrate {quoted(release_id)}", what=f"migrations of {release_id}",
                timeout=300).stdout


def prune(conn: HostConnection, keep: int) -> list[str]:
    """Remove complete releases beyond the newest `keep`, never current or previous, then the shared
    venvs no release left links to. The releases removed."""
    state = releases(conn)
    protected = {state.current, state.previous}
    removable = [r for r in state.kept if r not in protected]
    surplus = max(0, len(state.kept) - keep)
    doomed = removable[:surplus]
    if doomed:
        run(conn, remote.command(PRUNE_PROGRAM, BASE, *doomed), what="pruning old releases and unused venvs",
             timeout=120)
    return doomed


def seed(conn: HostConnection, release_id: str, with_db: bool) -> str:
    """Load the reference catalogue (once, `with_db`) and write its audio files into shared/media."""
    cmd = f"sudo -n {TASK_WRAPPER} seed {quoted(release_id)}" + ("" if with_db else " --no-db")
    return run(conn, cmd, what="seeding the catalogue", timeout=300).stdout
