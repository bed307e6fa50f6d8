"""Releases install what was verified and nothing else, on a real stream host.

Forged artifacts reach stream1 through `stream_host.stage` as the deploy user (upload, then the host
program), bypassing the controller's `release.verify`: an artifact swapped after it was verified, one
whose payload GNU tar reads as other members than the verified list (the host was told its sha256), and
one whose whole manifest was rewritten to match (only the requirements' own check is left). Each must be
refused with one line; `current` must not move, no releases/<id> of the forged release (nor its upload,
nor a venv) may remain, and nothing may land in the deploy user's other trees.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT
from roadie.deploy import builder, release, stream_host, wheelhouse
from tests.unit import forge

HOST = "stream1"
PINNED_WHEEL_PREFIX = "wheels/redis-"   # a dependency wheel app/requirements.txt pins
MEDIA = stream_host.BASE / "shared" / "media"
STATE = f"""
readlink {stream_host.CURRENT}; echo '--'
ls -A {stream_host.RELEASES}; echo '--'
ls -A {stream_host.VENVS}; echo '--'
ls -A {MEDIA}
"""


@pytest.fixture(scope="module")
def good(stack, tmp_path_factory) -> release.Release:
    """A release of the working tree's app under a new id, built and verified here, staged nowhere yet."""
    release_id = f"lab-integrity-{int(time.time())}"
    app = ROOT / "build" / "variants" / release_id / "app"
    shutil.rmtree(app.parent, ignore_errors=True)
    shutil.copytree(ROOT / "app", app, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = builder.build(tmp_path_factory.mktemp("integrity") / "out", release_id, app_dir=app)
    assert release.verify(built.path) == built.manifest
    return built


def _state(conns) -> str:
    result = conns(HOST).run(STATE, hide=True, warn=True, in_stream=False, timeout=60)
    assert result.exited == 0, result.stderr
    return result.stdout


def _forget(conns, release_id: str) -> None:
    """Remove the release as root (the auditor's hand), so each case starts with it absent."""
    conns(HOST).run(f"rm -rf {stream_host.RELEASES / release_id}", hide=True, in_stream=False, timeout=60)


def _stage(as_deploy, artifact: Path, manifest: release.Manifest, deps: wheelhouse.Dependencies) -> bool:
    conn = as_deploy(HOST)
    remote = str(stream_host.RELEASES / f".{manifest.release_id}.tar.gz")
    conn.put(str(artifact), remote)
    return stream_host.stage(conn, remote, manifest, deps)


def _told_payload(good: release.Manifest, forged: dict) -> release.Manifest:
    data = {**good.as_dict(), "payload_sha256": forged["payload_sha256"], "payload_size": forged["payload_size"]}
    return release.parse_manifest(json.dumps(data).encode(), "forged")


def _wheel(entries: list[forge.Entry]) -> str:
    return next(info.name for info, _ in entries if info.name.startswith(PINNED_WHEEL_PREFIX))


def _requirements_with(line: bytes):
    def edit(entries: list[forge.Entry]) -> list[forge.Entry]:
        data = next(d for info, d in entries if info.name == "requirements.txt")
        return forge.replaced(entries, "requirements.txt", line + data)
    return edit


def _add(*new: forge.Entry):
    return lambda entries: [*entries, *new]


def _swap(name: str, new: forge.Entry):
    return lambda entries: [new if info.name == name else (info, d) for info, d in entries]


# (edit of the payload's entries, what the host is told: "verified" list, "payload" sha256 too, or "all"
# of the forged manifest, the refusal it must give)
CASES = {
    "swapped after verify": (_requirements_with(b"--find-links http://10.87.0.250/\n"), "verified",
                             "payload sha256 or size does not match the verified manifest"),
    "changed requirements": (_requirements_with(b"--find-links http://10.87.0.250/\n"), "payload",
                             "requirements.txt does not match its sha256 in the verified list"),
    "changed wheel": (lambda e: forge.replaced(e, _wheel(e), b"PK not the wheel that was pinned"), "payload",
                      "does not match its sha256 in the verified list"),
    "unlisted member": (_add(forge.entry("app/streamsvc/evil.py", b"import os\n")), "payload",
                        "member 'app/streamsvc/evil.py' is not in the verified list"),
    "duplicate member": (_add(forge.entry("app/gunicorn.conf.py", b"raw_env = ['EVIL=1']\n")), "payload",
                         "member 'app/gunicorn.conf.py' appears twice"),
    "symlink into media": (_swap("app/streamsvc", forge.entry("app/streamsvc", kind=tarfile.SYMTYPE,
                                                             link=str(MEDIA))), "payload", "is a symbolic link"),
    "hard link": (_add(forge.entry("app/evil", kind=tarfile.LNKTYPE, link="app/gunicorn.conf.py")), "payload",
                  "is a hard link"),
    "climbing member": (_add(forge.entry("../../shared/media/evil.py", b"import os\n")), "payload",
                        "is not in the verified list"),
    "option line": (_requirements_with(b"--index-url http://10.87.0.250/simple\n"), "all",
                    "requirements.txt line 1 is an option line"),
    "wheel not pinned": (lambda e: forge.replaced(e, _wheel(e), b"PK not the wheel that was pinned"), "all",
                         "pins .* to no wheel this release carries"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_forged_release_is_refused_by_the_host_and_leaves_nothing(good, as_deploy, conns, tmp_path, case):
    edit, told, pattern = CASES[case]
    release_id = good.manifest.release_id
    _forget(conns, release_id)
    forged_path = tmp_path / f"{release_id}.tar.gz"
    forged = forge.forge(good.path, forged_path, edit, relist=told == "all")
    sent = {"verified": good.manifest, "payload": _told_payload(good.manifest, forged),
            "all": release.parse_manifest(json.dumps(forged).encode(), "forged")}[told]
    before = _state(conns)
    with pytest.raises(RoadieError) as caught:
        _stage(as_deploy, forged_path, sent, wheelhouse.dependencies(good.path))
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{HOST}: staging {release_id} failed: refused: "), message
    assert re.search(pattern, message), message
    after = _state(conns)
    # current did not move; no releases/<id>, no upload, no venv, nothing in media: the listings are equal.
    assert after == before
    assert release_id not in after.split()


def test_the_same_release_unforged_stages(good, as_deploy, conns):
    # The control: what the cases above refuse is the forgery, not the release.
    release_id = good.manifest.release_id
    _forget(conns, release_id)
    current = _state(conns).split("--")[0]
    try:
        assert _stage(as_deploy, good.path, good.manifest, wheelhouse.dependencies(good.path)) is True
        listing = conns(HOST).run(f"cd {stream_host.RELEASES / release_id} && test -f .roadie-complete && "
                                  "find . -type l -printf '%p -> %l\\n'", hide=True, warn=True, in_stream=False)
        assert listing.exited == 0, listing.stderr
        assert listing.stdout.split("\n")[0].startswith("./venv -> ../../venvs/"), listing.stdout
        assert listing.stdout.strip().count("\n") == 0, "the venv link is the release's only link"
        assert _state(conns).split("--")[0] == current
    finally:
        _forget(conns, release_id)
