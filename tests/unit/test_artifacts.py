"""roadie.deploy.artifacts: which artifact `fab deploy` ships, decided before any host is contacted."""

from types import SimpleNamespace

import pytest

from roadie.core.errors import RoadieError
from roadie.deploy import artifacts, builder, release


@pytest.fixture
def verified(monkeypatch):
    """release.verify recording the paths it was asked to verify."""
    seen = []

    def verify(path):
        seen.append(path)
        return SimpleNamespace(release_id=path.name.removesuffix(".tar.gz"))

    monkeypatch.setattr(release, "verify", verify)
    return seen


@pytest.mark.parametrize("choice", [
    {"release_id": "r1", "artifact": "x.tar.gz", "build": False},
    {"release_id": "r1", "artifact": None, "build": True},
    {"release_id": None, "artifact": "x.tar.gz", "build": True},
])
def test_only_one_source_of_artifact_is_taken(choice, tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "build", lambda out: pytest.fail("built"))
    with pytest.raises(RoadieError, match="give one of --release, --artifact or --build"):
        artifacts.resolve(**choice, releases_dir=tmp_path)


def test_a_release_id_names_a_built_artifact(tmp_path, verified):
    (tmp_path / "r2.tar.gz").write_bytes(b"")
    path, manifest = artifacts.resolve("r2", None, False, releases_dir=tmp_path)
    assert path == tmp_path / "r2.tar.gz" and verified == [path] and manifest.release_id == "r2"


def test_an_unknown_release_lists_what_was_built(tmp_path, verified):
    for name in ("b1", "a1"):
        (tmp_path / f"{name}.tar.gz").write_bytes(b"")
    with pytest.raises(RoadieError, match=r"unknown release 'r9' \(built: a1, b1; use --build\)"):
        artifacts.resolve("r9", None, False, releases_dir=tmp_path)
    with pytest.raises(RoadieError, match=r"\(built: none; use --build\)"):
        artifacts.resolve("r9", None, False, releases_dir=tmp_path / "empty")
    assert verified == []


def test_a_bad_release_id_is_refused_before_any_file_is_read(tmp_path, verified):
    with pytest.raises(RoadieError, match="bad release id '../etc'"):
        artifacts.resolve("../etc", None, False, releases_dir=tmp_path)
    assert verified == []


def test_an_artifact_path_is_verified_as_given(tmp_path, verified):
    path, _ = artifacts.resolve(None, str(tmp_path / "elsewhere.tar.gz"), False, releases_dir=tmp_path)
    assert verified == [tmp_path / "elsewhere.tar.gz"] == [path]


@pytest.mark.parametrize("build", [True, False])
def test_without_a_release_the_working_tree_is_built(build, tmp_path, verified, monkeypatch):
    built = []
    monkeypatch.setattr(builder, "build", lambda out: built.append(out) or SimpleNamespace(path=out / "new.tar.gz"))
    path, _ = artifacts.resolve(None, None, build, releases_dir=tmp_path)
    assert built == [tmp_path] and verified == [tmp_path / "new.tar.gz"] == [path]


def test_a_damaged_artifact_is_refused(tmp_path):
    (tmp_path / "r3.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(RoadieError):
        artifacts.resolve("r3", None, False, releases_dir=tmp_path)
