"""The lab's Docker engine and base image on this machine (the controller).

The tools (Debian's docker.io, debootstrap, the SSH client), the engine itself (started in the
background when PID 1 is not systemd), the inotify limit systemd needs per host, and the base image
built from lab/image/ with debootstrap, rebuilt when the recipe changes. The hosts: lab.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from roadie.core.errors import RoadieError
from roadie.core.paths import LAB_IMAGE_RECIPE, LAB_STATE

CONTAINER_PREFIX = "roadie-"
LABEL = "roadie.lab"
IMAGE_REPO = "roadie-lab"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("ROADIE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DOCKER_START_TIMEOUT = 60.0

Log = Callable[[str], None]


def say(message: str) -> None:
    print(f"lab: {message}", flush=True)


# ---------------------------------------------------------------- docker

def run(args: list[str], *, check: bool = True, input: str | bytes | None = None,
         timeout: float | None = 300, text: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(args, capture_output=True, input=input, timeout=timeout, text=text, env=env)
    except FileNotFoundError:
        raise RoadieError(f"{args[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise RoadieError(f"{' '.join(args[:3])} did not finish within {timeout:.0f} s") from None
    if check and result.returncode != 0:
        err = result.stderr if text else result.stderr.decode(errors="replace")
        last = (err.strip().splitlines() or ["(no output)"])[-1]
        raise RoadieError(f"{' '.join(args[:3])} failed: {last}")
    return result


def docker(*args: str, check: bool = True, input: str | None = None, timeout: float | None = 300):
    """Run the docker CLI; returns the CompletedProcess."""
    return run([_docker_bin(), *args], check=check, input=input, timeout=timeout)


def _docker_bin() -> str:
    # Debian's client matches Debian's engine; fall back to whatever is on PATH.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def ensure_tools(log: Log = say) -> None:
    """Install Debian's docker.io, debootstrap and the SSH client when missing (needs root)."""
    wanted = {"dockerd": "docker.io", "debootstrap": "debootstrap", "ssh-keygen": "openssh-client",
              "ssh": "openssh-client"}
    missing = sorted({pkg for tool, pkg in wanted.items() if not _which(tool)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise RoadieError(f"missing {', '.join(missing)}; install them as root (apt-get install {' '.join(missing)})")
    log(f"installing {', '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run(args, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RoadieError(f"{' '.join(args[:2])} failed: {last}")


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


def docker_running() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0
    except RoadieError:
        return False


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
MIN_INOTIFY_INSTANCES = 1024


def ensure_inotify(log: Log = say, path: Path = INOTIFY_INSTANCES) -> None:
    """Raise the controller's inotify instance limit: each host's systemd needs several, and the
    kernel's default (128) runs out near 20 hosts, leaving a host whose sshd never starts."""
    try:
        current = int(path.read_text())
    except (OSError, ValueError):
        return
    if current >= MIN_INOTIFY_INSTANCES:
        return
    if os.geteuid() != 0:
        raise RoadieError(f"fs.inotify.max_user_instances is {current}; as root: "
                          f"sysctl fs.inotify.max_user_instances={MIN_INOTIFY_INSTANCES}")
    path.write_text(f"{MIN_INOTIFY_INSTANCES}\n")
    log(f"raised fs.inotify.max_user_instances from {current} to {MIN_INOTIFY_INSTANCES} (systemd per host)")


def ensure_docker(log: Log = say, timeout: float = DOCKER_START_TIMEOUT) -> None:
    """Start dockerd in the background when it is not running (PID 1 is not systemd here) and wait."""
    if docker_running():
        return
    dockerd = _which("dockerd")
    if not dockerd:
        raise RoadieError("dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise RoadieError("the Docker engine is not running and only root can start it")
    LAB_STATE.mkdir(exist_ok=True)
    log_path = LAB_STATE / "dockerd.log"
    log("starting the Docker engine")
    with open(log_path, "ab") as out:
        subprocess.Popen([dockerd], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker_running():
            return
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
    raise RoadieError(f"the Docker engine did not start within {timeout:.0f} s: {tail[0]} (see {log_path})")


def container_name(host: str) -> str:
    return f"{CONTAINER_PREFIX}{host}"


def exec_on(host: str, *command: str, input: str | None = None, check: bool = True, timeout: float = 60):
    """Run a command in a lab host through `docker exec` (the trusted channel, not SSH)."""
    return docker("exec", "-i", container_name(host), *command, input=input, check=check, timeout=timeout)


# ---------------------------------------------------------------- base image

def recipe_hash() -> str:
    """Hash of everything that defines the base image; the image is rebuilt when it changes."""
    digest = hashlib.sha256()
    for path in sorted(LAB_IMAGE_RECIPE.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(f"{DEBIAN_SUITE}\n{DEBIAN_MIRROR}".encode())
    return digest.hexdigest()[:16]


def image_tag() -> str:
    return f"{IMAGE_REPO}:base-{recipe_hash()}"


def image_packages() -> list[str]:
    lines = (LAB_IMAGE_RECIPE / "packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


IMAGE_ALIAS = f"{IMAGE_REPO}:base"  # what molecule scenarios use: always the current recipe's image


def ensure_image(log: Log = say, rebuild: bool = False) -> str:
    """Build the base image from debootstrap unless the current recipe's image exists."""
    tag = image_tag()
    if not rebuild and docker("image", "inspect", tag, check=False).returncode == 0:
        docker("tag", tag, IMAGE_ALIAS)
        return tag
    if os.geteuid() != 0:
        raise RoadieError("building the lab image needs root (debootstrap)")
    log(f"building base image {tag} (debootstrap {DEBIAN_SUITE}, about 2 minutes)")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="roadie-image-", dir="/var/tmp"))
    rootfs = workdir / "rootfs"
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(image_packages())}",
              DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR], timeout=1200)
        run(["sh", str(LAB_IMAGE_RECIPE / "customize.sh"), str(rootfs)], timeout=300)
        rootfs_tag = f"{IMAGE_REPO}:rootfs-{recipe_hash()}"
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            imported = subprocess.run([_docker_bin(), "import", "-", rootfs_tag], stdin=tar.stdout,
                                      capture_output=True, text=True, timeout=600)
        finally:
            tar.stdout.close()
            tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise RoadieError(f"docker import of the base image failed: {imported.stderr.strip()[-200:]}")
        # `docker import --change` cannot set STOPSIGNAL: a one-file Dockerfile adds the metadata.
        run([_docker_bin(), "build", "-q", "--build-arg", f"ROOTFS={rootfs_tag}",
              "--label", f"{LABEL}.recipe={recipe_hash()}", "-t", tag,
              "-f", str(LAB_IMAGE_RECIPE / "Dockerfile"), str(LAB_IMAGE_RECIPE)],
             timeout=300, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        docker("rmi", rootfs_tag, check=False)
        docker("tag", tag, IMAGE_ALIAS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"built {tag} in {time.monotonic() - started:.0f} s")
    return tag
