"""Forged release artifacts for the tests: what someone who can write an artifact after its build could
hand a host. The payload is rebuilt member by member (duplicates, links, devices and long names allowed),
and the manifest inside rewritten to match as far as the attacker chooses.

Also a small committed app tree and real, installable wheels, built here (no network), and a release built
from them.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from roadie.deploy import builder, release, wheelhouse

Entry = tuple[tarfile.TarInfo, bytes | None]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(artifact: Path) -> tuple[dict, list[Entry]]:
    """(manifest.json as a dict, the payload's entries in order) of an artifact."""
    with tarfile.open(artifact, "r:gz") as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())
        payload = outer.extractfile("payload.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as inner:
        entries = [(m, inner.extractfile(m).read() if m.isreg() else None) for m in inner.getmembers()]
    return manifest, entries


def entry(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, link: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def replaced(entries: list[Entry], name: str, data: bytes) -> list[Entry]:
    """`entries` with the regular file `name` holding `data` instead."""
    assert any(info.name == name for info, _ in entries), name
    return [entry(name, data) if info.name == name else (info, content) for info, content in entries]


def pack(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A .tar.gz of `entries`, in order, exactly as given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buffer.getvalue())


def listed(entries: list[Entry]) -> list[dict]:
    """The members list a manifest would carry for these entries (regular files and directories)."""
    found = {}
    for info, data in entries:
        if info.isdir():
            found[info.name] = {"path": info.name, "type": "dir"}
        elif info.isreg():
            found[info.name] = {"path": info.name, "type": "file", "size": len(data), "sha256": sha256(data)}
    return [found[name] for name in sorted(found)]


def write(path: Path, files: list[tuple[str, bytes]]) -> Path:
    """An artifact (outer .tar.gz) holding these regular files, in order."""
    path.write_bytes(pack([entry(name, data) for name, data in files]))
    return path


def forge(artifact: Path, out: Path, edit: Callable[[list[Entry]], list[Entry]], *, fmt: int = tarfile.PAX_FORMAT,
          relist: bool = False) -> dict:
    """Write to `out` a copy of `artifact` whose payload entries went through `edit`; its manifest says the
    new payload's sha256 and size (and, with `relist`, lists its files). The forged manifest."""
    manifest, entries = read(artifact)
    entries = edit(entries)
    payload = pack(entries, fmt)
    manifest = {**manifest, "payload_sha256": sha256(payload), "payload_size": len(payload)}
    if relist:
        manifest["members"] = listed(entries)
    write(out, [("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode()),
                ("payload.tar.gz", payload)])
    return manifest


def wheel(name: str, version: str, source: str, requires: tuple[str, ...] = ()) -> tuple[str, bytes]:
    """(file name, bytes) of a real pure-Python wheel holding one module `name` with `source`."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{dist}.py": source.encode(), f"{info}/METADATA": metadata.encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member_name, data in files.items():
            archive.writestr(member_name, data)
    return f"{dist}-{version}-py3-none-any.whl", buffer.getvalue()


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c",
                           "commit.gpgsign=false", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def committed_app(repo: Path, requirements: str = "demo==1.0\n") -> Path:
    """A small stream-service app tree committed in its own git repository; its app directory."""
    app = repo / "app"
    (app / "streamsvc").mkdir(parents=True)
    (app / "streamsvc" / "__init__.py").write_text('"""svc"""\n')
    (app / "streamsvc" / "wsgi.py").write_text("def create_app():\n    return None\n")
    (app / "gunicorn.conf.py").write_text("bind = ['127.0.0.1:8000']\n")
    (app / "requirements.txt").write_text(requirements)
    (app / "pyproject.toml").write_text('[project]\nname = "streamsvc"\nversion = "0.1.0"\n'
                                        'requires-python = ">=3.11"\ndependencies = ["demo==1.0"]\n')
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return app


@dataclass
class Built:
    """A verified release artifact of the demo app, its manifest and its dependency set."""

    artifact: Path
    manifest: release.Manifest
    deps: wheelhouse.Dependencies


def build(repo_root: Path, release_id: str, change: Callable[[Path], None] | None = None) -> Built:
    """Build release `release_id` of the committed demo app under `repo_root` (created on first use, with
    its pinned demo wheel); `change` edits the app tree first."""
    app = repo_root / "repo" / "app"
    if not app.exists():
        committed_app(repo_root / "repo")
        wheels = repo_root / "wheels"
        wheels.mkdir()
        name, data = wheel("demo", "1.0", "VALUE = 'the wheel the build pinned'\n")
        (wheels / name).write_bytes(data)
    if change:
        change(app)
    artifact = builder.build(repo_root / "out", release_id, app_dir=app, wheels=repo_root / "wheels").path
    return Built(artifact, release.verify(artifact), wheelhouse.dependencies(artifact))
