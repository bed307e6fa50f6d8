"""The release artifact a deploy ships: one built earlier (--release), a file (--artifact) or a fresh build."""

from __future__ import annotations

from pathlib import Path

from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT
from roadie.deploy import builder, release

RELEASES_DIR = ROOT / "build" / "releases"


def built(releases_dir: Path = RELEASES_DIR) -> list[str]:
    """The ids of the releases built into `releases_dir`, sorted."""
    return sorted(p.name.removesuffix(".tar.gz") for p in releases_dir.glob("*.tar.gz"))


def resolve(release_id: str | None, artifact: str | None, build: bool,
            releases_dir: Path = RELEASES_DIR) -> tuple[Path, release.Manifest]:
    """The artifact to deploy and its verified manifest; with none of the three, a build of the working tree."""
    if sum(bool(x) for x in (release_id, artifact, build)) > 1:
        raise RoadieError("give one of --release, --artifact or --build")
    if artifact:
        path = Path(artifact)
    elif release_id:
        path = releases_dir / f"{release.check_release_id(release_id)}.tar.gz"
        if not path.is_file():
            known = ", ".join(built(releases_dir))
            raise RoadieError(f"unknown release {release_id!r} (built: {known or 'none'}; use --build)")
    else:
        path = builder.build(releases_dir).path
    return path, release.verify(path)
