"""Release artifacts: reproducible payload, manifest, and refusal of damaged or mislabelled artifacts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from roadie.core.errors import RoadieError
from roadie.deploy import builder, release, wheelhouse
from tests.unit import forge

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c",
                           "commit.gpgsign=false", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def _committed_repo(tmp_path_factory) -> Path:
    """A small app tree committed in its own git repository (made once; tests get copies)."""
    repo = tmp_path_factory.mktemp("template") / "repo"
    app = repo / "app"
    (app / "streamsvc" / "migrations").mkdir(parents=True)
    (app / "streamsvc" / "__init__.py").write_text('"""svc"""\n')
    (app / "streamsvc" / "wsgi.py").write_text("def create_app():\n    return None\n")
    (app / "streamsvc" / "migrations" / "0001_init.sql").write_text("CREATE TABLE t (id int);\n")
    (app / "gunicorn.conf.py").write_text("bind = ['127.0.0.1:8000']\n")
    (app / "requirements.txt").write_text("demo==1.0\n")
    (app / "pyproject.toml").write_text('[project]\nname = "streamsvc"\nversion = "0.1.0"\n'
                                        'requires-python = ">=3.11"\ndependencies = ["demo==1.0"]\n'
                                        '[project.scripts]\nstreamsvc = "streamsvc.wsgi:create_app"\n')
    (app / "README.md").write_text("not shipped\n")
    (repo / "other.txt").write_text("outside app/\n")
    (repo / ".gitignore").write_text("__pycache__/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    # Ignored by git but present: never shipped.
    (app / "streamsvc" / "__pycache__").mkdir()
    (app / "streamsvc" / "__pycache__" / "wsgi.cpython-311.pyc").write_bytes(b"\0")
    return repo


@pytest.fixture
def source(_committed_repo, tmp_path) -> Path:
    """A private copy of the committed app tree; returns its app directory."""
    repo = tmp_path / "repo"
    shutil.copytree(_committed_repo, repo, symlinks=True)
    return repo / "app"


@pytest.fixture
def wheels(tmp_path) -> Path:
    path = tmp_path / "wheels"
    path.mkdir()
    (path / "demo-1.0-py3-none-any.whl").write_bytes(b"PK not really a wheel")
    return path


def _payload(artifact: Path) -> bytes:
    with tarfile.open(artifact, "r:gz") as tar:
        return tar.extractfile("payload.tar.gz").read()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member_name, data in members.items():
            info = tarfile.TarInfo(member_name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue())


def _repack(artifact: Path, members: dict[str, bytes], name: str | None = None) -> Path:
    """Write a new artifact with these members (a tampered copy), beside the original."""
    out = artifact.with_name(name or artifact.name)
    out.write_bytes(_tar_gz(members))
    return out


def _members(artifact: Path) -> dict[str, bytes]:
    with tarfile.open(artifact, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _one_line_error(artifact: Path, pattern: str) -> str:
    with pytest.raises(RoadieError, match=pattern) as caught:
        release.verify(artifact)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ building


def test_build_writes_an_artifact_with_manifest_and_payload(source, wheels, tmp_path):
    built = builder.build(tmp_path / "out", app_dir=source, wheels=wheels, now=NOW)
    m = built.manifest
    head = _git(source, "rev-parse", "HEAD")
    assert m.release_id == f"20250304050607-{head[:len(m.release_id) - 15]}"
    assert re.fullmatch(r"20250304050607-[0-9a-f]{7,40}", m.release_id)
    assert built.path == tmp_path / "out" / f"{m.release_id}.tar.gz"
    assert (m.git_sha, m.dirty, m.built_at, m.python, m.format) == (head, False, "2025-03-04T05:06:07Z", "3.11", 2)
    payload = _payload(built.path)
    assert (m.payload_size, m.payload_sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert json.loads(_members(built.path)["manifest.json"])["payload_sha256"] == m.payload_sha256
    # Every payload entry is listed, with the sha256 of its bytes: what a host may install.
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
        entries = [(e, tar.extractfile(e).read() if e.isreg() else None) for e in tar.getmembers()]
    assert [x.as_dict() for x in m.members] == forge.listed(entries)
    assert json.loads(_members(built.path)["manifest.json"])["members"] == forge.listed(entries)
    assert release.verify(built.path) == m
    assert sorted(os.listdir(tmp_path / "out")) == [built.path.name]  # no temporary files left


def test_payload_holds_the_app_and_wheels_only_with_neutral_metadata(source, wheels, tmp_path):
    built = builder.build(tmp_path, "r1", app_dir=source, wheels=wheels, now=NOW)
    with tarfile.open(fileobj=io.BytesIO(_payload(built.path)), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "app", "app/gunicorn.conf.py", "app/streamsvc", "app/streamsvc/__init__.py",
            "app/streamsvc/migrations", "app/streamsvc/migrations/0001_init.sql", "app/streamsvc/wsgi.py",
            "requirements.txt", "wheels", "wheels/demo-1.0-py3-none-any.whl", "wheels/streamsvc-0.1.0-py3-none-any.whl"]
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", builder.FIXED_MTIME)
            assert m.mode == (0o755 if m.isdir() else 0o644)
        requirements = tar.extractfile("requirements.txt").read().decode()
        app = tar.extractfile("wheels/streamsvc-0.1.0-py3-none-any.whl").read()
    demo = (wheels / "demo-1.0-py3-none-any.whl").read_bytes()
    assert requirements == (builder.PINS_HEADER + f"demo==1.0 --hash=sha256:{forge.sha256(demo)}\n\n"
                            f"{release.APP_MARKER}\nstreamsvc==0.1.0 --hash=sha256:{forge.sha256(app)}\n")


def test_the_app_wheel_is_deterministic_and_installs_offline(source, tmp_path):
    name, data = builder.app_wheel(source)
    assert name == "streamsvc-0.1.0-py3-none-any.whl"
    assert builder.app_wheel(source)[1] == data
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        names = wheel.namelist()
        metadata = wheel.read("streamsvc-0.1.0.dist-info/METADATA").decode()
    assert "streamsvc/migrations/0001_init.sql" in names and not any("__pycache__" in n for n in names)
    assert "Requires-Dist: demo==1.0" in metadata
    (tmp_path / name).write_bytes(data)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", str(tmp_path / "site"), str(tmp_path / name)],
                   check=True, capture_output=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    assert (tmp_path / "site" / "streamsvc" / "migrations" / "0001_init.sql").is_file()


def test_the_payload_is_reproducible(source, wheels, tmp_path):
    first = builder.build(tmp_path / "a", "r1", app_dir=source, wheels=wheels, now=NOW)
    for path in source.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    os.chmod(source / "gunicorn.conf.py", 0o600)
    second = builder.build(tmp_path / "b", "r2", app_dir=source, wheels=wheels,
                           now=datetime(2030, 1, 1, tzinfo=UTC))
    assert first.manifest.payload_sha256 == second.manifest.payload_sha256
    assert _payload(first.path) == _payload(second.path)
    assert first.manifest.built_at != second.manifest.built_at


def test_uncommitted_changes_in_app_make_a_dirty_release(source, wheels, tmp_path):
    (source.parent / "other.txt").write_text("changed outside app/: still clean\n")
    assert not builder.build(tmp_path / "a", app_dir=source, wheels=wheels, now=NOW).manifest.dirty
    (source / "streamsvc" / "new.py").write_text("x = 1\n")
    built = builder.build(tmp_path / "b", app_dir=source, wheels=wheels, now=NOW)
    assert built.manifest.dirty and built.manifest.release_id.endswith("-dirty")
    assert release.verify(built.path).dirty


@pytest.mark.parametrize("bad", ["", ".hidden", "-rf", "../up", "a/b", "a b", "x" * 65, "ü", "a\nb", "..", 7])
def test_bad_release_ids_are_refused_before_building(source, wheels, tmp_path, bad):
    with pytest.raises(RoadieError, match="bad release id") as caught:
        builder.build(tmp_path / "out", bad, app_dir=source, wheels=wheels)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("good", ["r1", "v1.2.3", "2025_hotfix-2", "20250304050607-abcdef1-dirty", "A" * 64])
def test_good_release_ids(good):
    assert release.check_release_id(good) == good


def test_an_existing_release_is_not_overwritten(source, wheels, tmp_path):
    builder.build(tmp_path, "r1", app_dir=source, wheels=wheels)
    with pytest.raises(RoadieError, match="already exists"):
        builder.build(tmp_path, "r1", app_dir=source, wheels=wheels)


def test_outside_a_git_checkout_the_build_is_refused(tmp_path, wheels):
    app = tmp_path / "plain"
    (app / "streamsvc").mkdir(parents=True)
    with pytest.raises(RoadieError, match="not in a git checkout"):
        builder.build(tmp_path / "out", app_dir=app, wheels=wheels)


def test_a_symlink_in_the_app_is_refused(source, wheels, tmp_path):
    (source / "streamsvc" / "link.py").symlink_to("/etc/hostname")
    with pytest.raises(RoadieError, match="symlink"):
        builder.build(tmp_path / "out", "r1", app_dir=source, wheels=wheels)


def _fake_pip(calls: list, extra: tuple[str, ...] = ()):
    """pip download as a function: one wheel per line of the -r file it is given (plus `extra` wheels)."""
    def run(command, **kwargs):
        target = Path(command[command.index("-d") + 1])
        asked = Path(command[command.index("-r") + 1]).read_text()
        calls.append((command, asked))
        for line in asked.splitlines():
            name, _, version = line.split()[0].partition("==")
            (target / f"{name}-{version}-py3-none-any.whl").write_bytes(b"PK " + line.encode())
        for name in extra:
            (target / name).write_bytes(b"PK a dependency nobody pinned")
        return subprocess.CompletedProcess(command, 0, "", "")
    return run


def test_wheels_are_downloaded_once_then_taken_from_the_cache(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pins\ndemo==1.0  # why\n")
    calls = []
    monkeypatch.setattr(wheelhouse.subprocess, "run", _fake_pip(calls))
    first = wheelhouse.wheelhouse(requirements, tmp_path / "cache")
    second = wheelhouse.wheelhouse(requirements, tmp_path / "cache")
    assert first == second and len(calls) == 1
    assert [p.name for p in first.glob("*.whl")] == ["demo-1.0-py3-none-any.whl"]
    command, asked = calls[0]
    for flag in ("--only-binary=:all:", "manylinux2014_x86_64", "3.11", "cp311"):
        assert flag in command
    assert asked == "demo==1.0\n"  # pip is given the checked pins, regenerated, nothing else of the file
    recorded = json.loads((first / ".complete").read_text())["wheels"]
    assert recorded == {"demo-1.0-py3-none-any.whl": forge.sha256(b"PK demo==1.0")}
    requirements.write_text("demo==2.0\n")
    assert wheelhouse.wheelhouse(requirements, tmp_path / "cache") != first and len(calls) == 2


def test_a_download_that_brings_an_unpinned_wheel_is_refused(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("demo==1.0\n")
    monkeypatch.setattr(wheelhouse.subprocess, "run", _fake_pip([], extra=("sneaky-9.9-py3-none-any.whl",)))
    with pytest.raises(RoadieError, match="brought sneaky-9.9-py3-none-any.whl, which no line pins"):
        wheelhouse.wheelhouse(requirements, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_option_lines_in_the_app_requirements_are_refused_before_pip_runs(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("demo==1.0\n--extra-index-url http://evil.invalid/simple\n")
    calls = []
    monkeypatch.setattr(wheelhouse.subprocess, "run", _fake_pip(calls))
    with pytest.raises(RoadieError, match="requirements.txt line 2 is an option line"):
        wheelhouse.wheelhouse(requirements, tmp_path / "cache")
    assert calls == []


def test_a_wheel_cache_changed_since_its_download_is_refused(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("demo==1.0\n")
    monkeypatch.setattr(wheelhouse.subprocess, "run", _fake_pip([]))
    cached = wheelhouse.wheelhouse(requirements, tmp_path / "cache")
    (cached / "demo-1.0-py3-none-any.whl").write_bytes(b"PK swapped in the cache")
    with pytest.raises(RoadieError, match="demo-1.0-py3-none-any.whl changed since its download"):
        wheelhouse.wheelhouse(requirements, tmp_path / "cache")
    (cached / "demo-1.0-py3-none-any.whl").write_bytes(b"PK demo==1.0")
    (cached / "added-1.0-py3-none-any.whl").write_bytes(b"PK")
    with pytest.raises(RoadieError, match="does not hold the wheels it recorded"):
        wheelhouse.wheelhouse(requirements, tmp_path / "cache")


def test_a_failed_download_is_one_line_and_caches_nothing(tmp_path, monkeypatch):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("nosuchpackage==9\n")
    monkeypatch.setattr(wheelhouse.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(
        command, 1, "", "Looking in indexes\nERROR: No matching distribution found for nosuchpackage==9\n"))
    with pytest.raises(RoadieError, match="No matching distribution found for nosuchpackage==9$"):
        wheelhouse.wheelhouse(requirements, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# ------------------------------------------------------------------ verification


@pytest.fixture
def artifact(source, wheels, tmp_path) -> Path:
    return builder.build(tmp_path / "out", "r1", app_dir=source, wheels=wheels, now=NOW).path


def test_a_tampered_payload_is_refused(artifact):
    members = _members(artifact)
    payload = bytearray(members["payload.tar.gz"])
    payload[len(payload) // 2] ^= 0xFF
    _repack(artifact, {**members, "payload.tar.gz": bytes(payload)})
    _one_line_error(artifact, "payload sha256 does not match the manifest")


def test_a_payload_of_the_wrong_size_is_refused(artifact):
    members = _members(artifact)
    _repack(artifact, {**members, "payload.tar.gz": members["payload.tar.gz"] + b"\0"})
    _one_line_error(artifact, "payload is .* bytes, the manifest says")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_a_truncated_artifact_is_refused(artifact, keep):
    data = artifact.read_bytes()
    artifact.write_bytes(data[:int(len(data) * keep)])
    _one_line_error(artifact, "r1.tar.gz: not a readable release archive")


def test_an_artifact_missing_its_last_bytes_is_refused(artifact):
    artifact.write_bytes(artifact.read_bytes()[:-4])  # only the gzip trailer is cut
    _one_line_error(artifact, "not a readable release archive")


def test_garbage_and_missing_files_are_refused(artifact, tmp_path):
    artifact.write_bytes(b"hello")
    _one_line_error(artifact, "not a readable release archive")
    with pytest.raises(RoadieError, match="no such release artifact"):
        release.verify(tmp_path / "absent.tar.gz")


@pytest.mark.parametrize("field", ["format", "release_id", "git_sha", "dirty", "built_at", "python", "platform",
                                   "payload_sha256", "payload_size", "members"])
def test_a_manifest_missing_a_field_is_refused(artifact, field):
    members = _members(artifact)
    manifest = json.loads(members["manifest.json"])
    del manifest[field]
    _repack(artifact, {**members, "manifest.json": json.dumps(manifest).encode()})
    _one_line_error(artifact, f"manifest.json has no {field}")


@pytest.mark.parametrize(("change", "pattern"), [
    ({"payload_size": "12"}, "payload_size must be an integer"),
    ({"payload_size": True}, "payload_size must be an integer"),
    ({"dirty": "no"}, "dirty must be true or false"),
    ({"git_sha": None}, "git_sha must be a string"),
    ({"payload_size": -1}, "payload_size is negative"),
    ({"payload_sha256": "abc"}, "payload_sha256 is not a sha256"),
    ({"git_sha": "main"}, "git_sha is not a full git commit id"),
    ({"built_at": "yesterday"}, "built_at is not a UTC time"),
    ({"python": "three"}, "python is not a Python version"),
    ({"format": 1}, "manifest format 1 is not supported"),
    ({"members": {}}, "members must be a list"),
    ({"members": [{"path": "app/x", "type": "symlink"}]}, "members: member app/x has type 'symlink'"),
    ({"members": [{"path": "requirements.txt", "type": "dir"}]}, "lists no file requirements.txt"),
    ({"release_id": "../r1"}, "bad release id"),
    ({"release_id": "r2"}, "manifest names release r2; the file name does not match"),
])
def test_a_wrong_manifest_is_refused(artifact, change, pattern):
    members = _members(artifact)
    manifest = {**json.loads(members["manifest.json"]), **change}
    _repack(artifact, {**members, "manifest.json": json.dumps(manifest).encode()})
    _one_line_error(artifact, pattern)


@pytest.mark.parametrize("manifest", [b"{not json", b"[]", b""])
def test_an_unparsable_manifest_is_refused(artifact, manifest):
    _repack(artifact, {**_members(artifact), "manifest.json": manifest})
    _one_line_error(artifact, "manifest.json is not")


def test_missing_or_extra_members_are_refused(artifact):
    members = _members(artifact)
    _repack(artifact, {"payload.tar.gz": members["payload.tar.gz"]})
    _one_line_error(artifact, "expected exactly manifest.json and payload.tar.gz, found payload.tar.gz")
    _repack(artifact, {**members, "extra": b""})
    _one_line_error(artifact, "found extra, manifest.json, payload.tar.gz")


def test_a_payload_that_would_escape_the_release_directory_is_refused(artifact):
    forge.forge(artifact, artifact, lambda entries: [*entries, forge.entry("../../etc/cron.d/evil", b"* * * * *\n")])
    _one_line_error(artifact, "would land outside the release directory")


# What someone who rewrote the artifact after the build could add; the manifest says the new payload's sha256.
FORGED = {
    "an unlisted file": (lambda e: [*e, forge.entry("app/streamsvc/evil.py", b"import os\n")],
                         "payload entry 'app/streamsvc/evil.py' is not in the manifest"),
    "a duplicate": (lambda e: [*e, forge.entry("app/streamsvc/wsgi.py", b"import os\n")],
                    "payload entry 'app/streamsvc/wsgi.py' appears twice"),
    "a symlink": (lambda e: [*e, forge.entry("app/evil", kind=tarfile.SYMTYPE, link="/etc")],
                  "payload entry 'app/evil' is a symbolic link"),
    "a hard link": (lambda e: [*e, forge.entry("app/evil", kind=tarfile.LNKTYPE, link="app/gunicorn.conf.py")],
                    "payload entry 'app/evil' is a hard link"),
    "a device": (lambda e: [*e, forge.entry("app/null", kind=tarfile.CHRTYPE)], "payload entry 'app/null' is a device"),
    "a changed file": (lambda e: forge.replaced(e, "app/streamsvc/wsgi.py", b"import os\n"),
                       "payload file app/streamsvc/wsgi.py does not match its sha256 in the manifest"),
    "a changed wheel": (lambda e: forge.replaced(e, "wheels/demo-1.0-py3-none-any.whl", b"PK evil"),
                        "payload file wheels/demo-1.0-py3-none-any.whl does not match its sha256"),
    "a missing file": (lambda e: [x for x in e if x[0].name != "app/streamsvc/wsgi.py"],
                       "payload has no app/streamsvc/wsgi.py, which the manifest lists"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_payload_that_is_not_exactly_what_its_manifest_lists_is_refused(artifact, case):
    edit, pattern = FORGED[case]
    forge.forge(artifact, artifact, edit)
    _one_line_error(artifact, pattern)


def _with_requirements(line: bytes):
    def edit(entries):
        data = next(d for info, d in entries if info.name == "requirements.txt")
        return forge.replaced(entries, "requirements.txt", data + line)
    return edit


@pytest.mark.parametrize(("line", "pattern"), [
    (b"--find-links http://evil.invalid/\n", "requirements.txt line 7 is an option line"),
    (b"  -e git+https://evil.invalid/x.git#egg=x\n", "requirements.txt line 7 is an option line"),
    (b"-r /etc/other.txt\n", "requirements.txt line 7 is an option line"),
    (b"https://evil.invalid/x-1.0-py3-none-any.whl\n", "requirements.txt line 7 is not a name==version pin"),
    (b"other==1.0\n", r"requirements.txt line 7 \(other==1.0\) has no --hash=sha256 pin"),
    (b"other==1.0 --hash=sha256:" + b"0" * 64 + b"\n", "pins other==1.0 to no wheel this release carries"),
])
def test_requirements_that_are_not_hash_pins_of_the_releases_wheels_are_refused(artifact, line, pattern):
    # The whole manifest rewritten to match the payload: only the requirements check is left to refuse it.
    forge.forge(artifact, artifact, _with_requirements(line), relist=True)
    _one_line_error(artifact, pattern)


def test_an_artifact_whose_manifest_matches_a_rewritten_payload_verifies(artifact):
    # The control for the two tests above: rewriting alone, with nothing wrong added, is not what they catch.
    forge.forge(artifact, artifact, _with_requirements(b"# a comment\n"), relist=True)
    assert release.verify(artifact).release_id == "r1"


# ------------------------------------------------------------------ requirements at build


@pytest.mark.parametrize("line", ["--index-url http://evil.invalid/simple", "--find-links=/tmp/wheels", "-e .",
                                  "-r other.txt", "-c constraints.txt", "demo>=1.0", "./demo-1.0-py3-none-any.whl",
                                  "https://evil.invalid/demo-1.0.whl", "demo==1.0; python_version < '3'"])
def test_app_requirements_that_are_not_exact_pins_are_refused_at_build(source, wheels, tmp_path, line):
    (source / "requirements.txt").write_text(f"demo==1.0\n{line}\n")
    with pytest.raises(RoadieError, match=r"app/requirements.txt: requirements.txt line 2 is (an option line|not a)"):
        builder.build(tmp_path / "out", "r1", app_dir=source, wheels=wheels)
    assert not (tmp_path / "out" / "r1.tar.gz").exists()


def test_a_pin_without_a_wheel_is_refused_at_build(source, wheels, tmp_path):
    (source / "requirements.txt").write_text("demo==1.0\nmissing==2.0\n")
    with pytest.raises(RoadieError, match=r"no wheel for missing==2.0 among the wheels of this build"):
        builder.build(tmp_path / "out", "r1", app_dir=source, wheels=wheels)


def test_hashes_pinned_in_the_app_requirements_must_match_the_wheel(source, wheels, tmp_path):
    demo = forge.sha256((wheels / "demo-1.0-py3-none-any.whl").read_bytes())
    (source / "requirements.txt").write_text(f"demo==1.0 --hash=sha256:{'0' * 64}\n")
    with pytest.raises(RoadieError, match="the wheel for demo==1.0 does not match the sha256 requirements.txt pins"):
        builder.build(tmp_path / "out", "r1", app_dir=source, wheels=wheels)
    (source / "requirements.txt").write_text(f"demo==1.0 --hash=sha256:{demo}\n")
    assert release.verify(builder.build(tmp_path / "out", "r2", app_dir=source, wheels=wheels).path)


# ------------------------------------------------------------------ dependency set (shared venvs)


def test_releases_that_change_only_the_app_share_a_dependency_key(source, wheels, tmp_path):
    first = builder.build(tmp_path / "out", "r1", app_dir=source, wheels=wheels, now=NOW)
    (source / "streamsvc" / "wsgi.py").write_text("# a new release of the app\n")
    project = source / "pyproject.toml"
    project.write_text(project.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    second = builder.build(tmp_path / "out", "r2", app_dir=source, wheels=wheels, now=NOW)
    assert first.manifest.payload_sha256 != second.manifest.payload_sha256
    one, two = wheelhouse.dependencies(first.path), wheelhouse.dependencies(second.path)
    assert one.key == two.key and len(one.key) == 24
    assert (one.app_requirement, two.app_requirement) == ("streamsvc==0.1.0", "streamsvc==0.2.0")


def test_a_changed_wheel_or_requirement_changes_the_dependency_key(source, wheels, tmp_path):
    (wheels / "extra-2.0-py3-none-any.whl").write_bytes(b"PK shipped from the start, pinned only in r3")
    before = wheelhouse.dependencies(builder.build(tmp_path / "out", "r1", app_dir=source, wheels=wheels,
                                                now=NOW).path)
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"PK other bytes, same name")
    rebuilt = wheelhouse.dependencies(builder.build(tmp_path / "out", "r2", app_dir=source, wheels=wheels,
                                                 now=NOW).path)
    requirements = source / "requirements.txt"
    requirements.write_text(requirements.read_text() + "extra==2.0\n")
    required = wheelhouse.dependencies(builder.build(tmp_path / "out", "r3", app_dir=source, wheels=wheels,
                                                  now=NOW).path)
    assert len({before.key, rebuilt.key, required.key}) == 3


def test_an_artifact_whose_requirements_do_not_name_the_app_has_no_dependency_key(artifact):
    members = _members(artifact)
    with tarfile.open(fileobj=io.BytesIO(members["payload.tar.gz"]), mode="r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}
    files["requirements.txt"] = b"demo==1.0\n"
    tampered = _repack(artifact, {**members, "payload.tar.gz": _tar_gz(files)}, name="other.tar.gz")
    with pytest.raises(RoadieError, match="does not name the app") as caught:
        wheelhouse.dependencies(tampered)
    assert "\n" not in str(caught.value)
