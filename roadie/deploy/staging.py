"""Staging a release on every stream host at once, before anything is switched.

Every host is measured first (room for the release, and the releases it has, in one round trip); then
each host is uploaded to and unpacks the release in parallel (stream_host.stage), unless it has it
already. Nothing is switched here: that is the executor's, batch by batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from roadie.core import ssh
from roadie.core.errors import RoadieError
from roadie.core.inventory import Host
from roadie.deploy import host_space, release, stream_host, wheelhouse
from roadie.deploy.types import Reporter


def stage(conns: dict[str, ssh.HostConnection], hosts: list[Host], artifact: Path,
          manifest: release.Manifest, report: Reporter, running: dict[str, str | None],
          then: Callable[[str], None] | None = None) -> None:
    """Upload and unpack on every host of `hosts` at once (`conns`: their connections); nothing is switched.
    Hosts install only what the verified `manifest` lists (the artifact could have changed since
    `release.verify`). `running` gets each host's current release as it is read. `then(host)`
    runs on each host's thread as soon as that host is staged (deploy runs the migrations on the first
    host staged while the others still stage); its failure is raised as it is once every host is done.

    First every host is measured (host_space.space): if one lacks room for the release, nothing is
    uploaded anywhere. A host that runs out of space all the same is named in one line and left with
    nothing of the release.
    """
    release_id = manifest.release_id
    remote = str(stream_host.RELEASES / f".{release_id}.tar.gz")
    deps = wheelhouse.dependencies(artifact)
    size = artifact.stat().st_size
    failed: list[str] = []

    def measure(host: Host) -> host_space.Space | None:
        try:
            return host_space.space(conns[host.name], manifest, size, deps, with_releases=True)
        except Exception as exc:  # every host's failure is reported, then we stop
            failed.append(ssh.describe_failure(host, exc))
            return None

    rooms = [found for found in ssh.parallel(measure, hosts) if found is not None]
    if failed:
        raise RoadieError(f"free-space check failed, nothing uploaded: {'; '.join(failed)}")
    short = [found.describe() for found in rooms if not found.enough]
    if short:
        raise RoadieError(f"not enough space for release {release_id} on {'; '.join(short)}; nothing uploaded")

    spaces = {found.host: found for found in rooms}
    errors: list[str] = []
    after: list[Exception] = []

    def one(host: Host) -> None:
        conn = conns[host.name]
        started = time.monotonic()
        found = spaces[host.name]
        assert found.present is not None   # measured with_releases
        running[host.name] = found.present.current
        if found.staged:
            report(f"release {release_id} already staged", host.name, event="staged")
        else:
            upload(host, conn, started)
        if then is not None:
            try:
                then(host.name)
            except Exception as exc:  # raised as it is once every host is done
                after.append(exc)

    def upload(host: Host, conn: ssh.HostConnection, started: float) -> None:
        try:
            conn.put(str(artifact), remote)
        except OSError as exc:  # paramiko's SFTP errors; a full filesystem is a bare "Failure"
            raise RoadieError(host_space.upload_failure(conn, manifest, size, deps, remote, exc)) from None
        try:
            stream_host.stage(conn, remote, manifest, deps)
        except RoadieError as exc:
            raise RoadieError(host_space.staging_failure(conn, manifest, size, deps, remote, str(exc))) from None
        report(f"staged {release_id} in {time.monotonic() - started:.1f} s", host.name, event="staged")

    def guarded(host: Host) -> None:
        try:
            one(host)
        except Exception as exc:  # every host's failure is reported, then we stop
            errors.append(ssh.describe_failure(host, exc))

    ssh.parallel(guarded, hosts)
    if errors:
        raise RoadieError(f"staging failed, nothing switched: {'; '.join(errors)}")
    if after:
        raise after[0]
