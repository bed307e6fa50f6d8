"""What Roadie does on one stream host over SSH: stage a release, switch `current`, restart, health-check.

Layout (DESIGN.md): /srv/stream/releases/<id>/ (app, venv, manifest.json), /srv/stream/shared/,
/srv/stream/current -> releases/<id>, switched atomically (a temporary link renamed over it).
"""

from __future__ import annotations

import io
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from roadie import remote
from roadie.errors import RoadieError
from roadie.release import Dependencies, Manifest, check_release_id
from roadie.ssh import python_command

BASE = PurePosixPath("/srv/stream")
RELEASES = BASE / "releases"
VENVS = BASE / "venvs"     # shared venvs, one per dependency set (release.dependencies)
CURRENT = BASE / "current"
PREVIOUS = BASE / "previous"
ENV_FILE = BASE / "shared" / "stream.env"
SERVICE = "stream.service"
TASK_WRAPPER = "/usr/local/sbin/stream-task"   # roles/streaming: migrate and seed, arguments checked
COMPLETE_MARK = ".roadie-complete"
STAGE_PROGRAM = "stage_release.py"   # roadie/remote/: unpacks and checks a release on the host
HEALTH_URL = "http://127.0.0.1/healthz"   # through nginx, as the balancer sees the host


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _run(conn, command: str, *, what: str, timeout: int | None = 300):  # noqa: ANN001, ANN202
    result = conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout)
    if result.exited != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RoadieError(f"{host_name(conn)}: {what} failed: {detail[0]}")
    return result


def host_name(conn) -> str:  # noqa: ANN001
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


_LIST = r'''
import json, os, sys
base = sys.argv[1]
rel = os.path.join(base, "releases")
def target(name):
    try:
        return os.path.basename(os.readlink(os.path.join(base, name)))
    except OSError:
        return None
kept = []
if os.path.isdir(rel):
    for entry in os.listdir(rel):
        path = os.path.join(rel, entry)
        if os.path.isfile(os.path.join(path, ".roadie-complete")):
            kept.append((os.stat(os.path.join(path, ".roadie-complete")).st_mtime, entry))
print(json.dumps({"current": target("current"), "previous": target("previous"),
                  "kept": [e for _, e in sorted(kept)]}))
'''


def releases(conn) -> Releases:  # noqa: ANN001
    """current, previous and the complete releases kept on the host."""
    out = _run(conn, python_command(_LIST, BASE), what="listing releases", timeout=60)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Releases(host_name(conn), data["current"], data["previous"], data["kept"])


def stage(conn, artifact_path: str, manifest: Manifest,  # noqa: ANN001
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
    target = RELEASES / release_id
    check = conn.run(f"test -f {_q(target / COMPLETE_MARK)}", hide=True, warn=True, in_stream=False)
    if check.exited == 0:
        conn.run(f"rm -f {_q(artifact_path)}", hide=True, warn=True, in_stream=False)
        return False
    request = json.dumps({"artifact": str(artifact_path), "releases": str(RELEASES), "venvs": str(VENVS),
                          "manifest": manifest.to_json().decode(), "key": deps.key if deps else "",
                          "app_requirement": deps.app_requirement if deps else ""})
    result = conn.run(remote.command(STAGE_PROGRAM), hide=True, warn=True, in_stream=io.StringIO(request + "\n"),
                      timeout=600)
    if result.exited != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise RoadieError(f"{host_name(conn)}: staging {release_id} failed: {detail[0]}")
    return True


def switch(conn, release_id: str) -> str | None:  # noqa: ANN001
    """Point `current` at a staged release atomically; `previous` keeps the one it replaced.

    Root owns /srv/stream, so the switch goes through the role's checked wrapper (`stream-task switch`),
    which checks the id and the completion mark and renames a fresh link over `current`.
    """
    check_release_id(release_id)
    out = _run(conn, f"sudo -n {TASK_WRAPPER} switch {_q(release_id)}", what=f"switching to {release_id}",
               timeout=60)
    old = out.stdout.strip()
    return old or None


def restart(conn) -> None:  # noqa: ANN001
    """Restart the stream service (graceful stop, then start)."""
    _run(conn, f"sudo -n systemctl restart {SERVICE}", what="restarting the stream service", timeout=120)


_HEALTH = r'''
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        print(json.dumps({"status": r.status, "body": json.loads(r.read() or b"{}")}))
except urllib.error.HTTPError as e:
    try:
        body = json.loads(e.read() or b"{}")
    except ValueError:
        body = {}
    print(json.dumps({"status": e.code, "body": body}))
except Exception as e:
    print(json.dumps({"status": 0, "error": type(e).__name__ + ": " + str(e)}))
'''


@dataclass
class Health:
    """One /healthz answer."""

    status: int
    release: str | None
    database: str | None
    cache: str | None
    error: str = ""

    def ok_for(self, release_id: str) -> bool:
        return (self.status == 200 and self.release == release_id and self.database == "ok"
                and self.cache == "ok")

    def describe(self) -> str:
        if self.error:
            return self.error
        return f"HTTP {self.status}, release {self.release}, database {self.database}, cache {self.cache}"


def health(conn, url: str = HEALTH_URL) -> Health:  # noqa: ANN001
    out = _run(conn, python_command(_HEALTH, url), what="health check", timeout=30)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    body = data.get("body") or {}
    return Health(data.get("status", 0), body.get("release"), body.get("database"), body.get("cache"),
                  data.get("error", ""))


def health_gate(conn, release_id: str, *, passes: int = 3, interval: float = 0.5,  # noqa: ANN001
                timeout: float = 60) -> Health:
    """`passes` healthy answers in a row reporting `release_id`, within `timeout`; else RoadieError."""
    deadline = time.monotonic() + timeout
    streak = 0
    last = None
    while time.monotonic() < deadline:
        last = health(conn)
        streak = streak + 1 if last.ok_for(release_id) else 0
        if streak >= passes:
            return last
        time.sleep(interval)
    raise RoadieError(f"{host_name(conn)}: health gate failed after {timeout:.0f} s: "
                      f"{last.describe() if last else 'no answer'} (want release {release_id}, db and cache ok)")


def migrate(conn, release_id: str) -> str:  # noqa: ANN001
    """Run the release's migrations once, as the service user with the service's environment.

    Through the role's checked wrapper, the one thing sudo lets the deploy user run for it.
    """
    return _run(conn, f"sudo -n {TASK_WRAPPER} migrate {_q(release_id)}", what=f"migrations of {release_id}",
                timeout=300).stdout


_PRUNE = r'''
import os, shutil, sys
base, doomed = sys.argv[1], sys.argv[2:]
venvs, releases = os.path.join(base, "venvs"), os.path.join(base, "releases")
for name in doomed:
    shutil.rmtree(os.path.join(releases, name))
used = set()
for entry in os.listdir(releases):
    link = os.path.join(releases, entry, "venv")
    if os.path.islink(link):
        used.add(os.path.basename(os.readlink(link)))
for name in sorted(os.listdir(venvs)) if os.path.isdir(venvs) else []:
    if name not in used:
        shutil.rmtree(os.path.join(venvs, name))
'''


def prune(conn, keep: int) -> list[str]:  # noqa: ANN001
    """Remove complete releases beyond the newest `keep`, never current or previous, then the shared
    venvs no release left links to. The releases removed."""
    state = releases(conn)
    protected = {state.current, state.previous}
    removable = [r for r in state.kept if r not in protected]
    surplus = max(0, len(state.kept) - keep)
    doomed = removable[:surplus]
    if doomed:
        _run(conn, python_command(_PRUNE, BASE, *doomed), what="pruning old releases and unused venvs",
             timeout=120)
    return doomed


def seed(conn, release_id: str, with_db: bool) -> str:  # noqa: ANN001
    """Load the reference catalogue (once, `with_db`) and write its audio files into shared/media."""
    cmd = f"sudo -n {TASK_WRAPPER} seed {_q(release_id)}" + ("" if with_db else " --no-db")
    return _run(conn, cmd, what="seeding the catalogue", timeout=300).stdout
