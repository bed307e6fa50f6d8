"""Local tasks: the lab, tests, lint. `inv --list` shows them; logic lives in roadie/."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from invoke import Collection, Exit, task

from roadie.core import fleet, inventory
from roadie.core.cli import emit_json, friendly, table
from roadie.core.errors import RoadieError
from roadie.core.fleet import Fleet
from roadie.deploy import builder, deploy, release
from roadie.deploy.types import Reporter
from roadie.lab import engine, keys, lab, molecule, provision
from roadie.lab import lint as roadie_lint

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
# Tools started from tasks (molecule, ansible-lint) find the venv's ansible first.
os.environ["PATH"] = VENV_BIN + os.pathsep + os.environ.get("PATH", "")


def _bin(tool: str) -> str:
    path = os.path.join(VENV_BIN, tool)
    return path if os.path.exists(path) else tool


def _print_status(states: list[lab.HostState]) -> None:
    rows = [(s.name, s.address, s.state, "up" if s.ssh else "down") for s in states]
    print(table(["host", "address", "container", "ssh"], rows))


def _fleet_check(pattern: str = "all") -> None:
    inv = inventory.load("lab")
    # As the lab's bootstrap account (Ansible's user): the deploy user exists only once provisioned.
    rows = fleet.check(inv, pattern, user=str(inv.host_var(next(iter(inv.hosts)), "ansible_user")))
    print(table(["host", "address", "ok", "detail"], [(r.host, r.address, "yes" if r.ok else "NO", r.detail)
                                                      for r in rows]))
    failed = [r.host for r in rows if not r.ok]
    if failed:
        raise Exit(f"error: fleet check failed on {', '.join(failed)}", code=1)


# ------------------------------------------------------------------ lab

@task(help={"stream_hosts": f"Number of stream hosts, {lab.DEFAULT_STREAM_HOSTS}..{lab.MAX_STREAM_HOSTS} "
                            f"(default {lab.DEFAULT_STREAM_HOSTS})."})
@friendly
def lab_up(c, stream_hosts=lab.DEFAULT_STREAM_HOSTS):
    """Bring up the lab hosts (installs Docker and builds the base image when needed)."""
    _print_status(lab.up(int(stream_hosts)))


@task
@friendly
def lab_down(c):
    """Remove the lab's hosts and network (the image and the lab key stay)."""
    lab.down()


@task(help={"json": "Print JSON instead of a table."})
@friendly
def lab_status(c, json=False):
    """Show every lab host: address, container state, sshd."""
    states = lab.status()
    if json:
        emit_json([s.as_dict() for s in states])
    else:
        _print_status(states)
    if not all(s.ssh for s in states):
        raise Exit(code=1)


@task(help={"host": "Lab host to log in to (e.g. stream1)."})
@friendly
def lab_ssh(c, host):
    """Open an SSH session on a lab host, host key checked."""
    argv = keys.ssh_argv(host)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - replaces this process with ssh, argv built by roadie.lab.keys


@task(help={"rebuild": "Rebuild even when the current recipe's image exists."})
@friendly
def lab_image(c, rebuild=False):
    """Build the lab base image (debootstrap) unless the current recipe's image exists."""
    engine.ensure_tools()
    engine.ensure_docker()
    print(engine.ensure_image(rebuild=rebuild))


@task(help={"pattern": "Host or group to check (default: all)."})
@friendly
def lab_check(c, pattern="all"):
    """Check every lab host over SSH: reachable, verified key, answers with its own name."""
    _fleet_check(pattern)


# ------------------------------------------------------------------ provisioning

def _provision(playbook="site", inventory_=None, check=False, diff=False, limit=None, tags=None,
               restart_primary=False):
    result = provision.run_in_change(playbook, inventory_, check=check, diff=diff, limit=limit, tags=tags,
                                     restart_primary=restart_primary)
    if not result.ok:
        failed = [h for h, c in result.recap.items() if c.get("failed") or c.get("unreachable")]
        where = f" on {', '.join(failed)}" if failed else ""
        raise Exit(f"error: playbook {result.playbook} failed{where} (exit {result.returncode})", code=1)
    print(f"provision: {result.playbook} done in {result.duration_s:.0f} s; changed: "
          f"{sum(c.get('changed', 0) for c in result.recap.values())} tasks on {len(result.changed_hosts())} hosts")
    return result


@task(help={"playbook": "Playbook name from playbooks/ (default: site).",
            "inventory": "Inventory: lab, staging, production or a path (default: $ANSIBLE_INVENTORY, else lab).",
            "check": "Dry run (ansible-playbook --check); change nothing.",
            "diff": "Show file differences.",
            "limit": "Only this host or group.",
            "tags": "Only these tags (comma-separated).",
            "restart_primary": "Let a change restart the PostgreSQL and Redis primaries (after their replicas) "
                               "although clients are connected: it cuts their sessions."})
@friendly
def provision_(c, playbook="site", inventory_=None, check=False, diff=False, limit=None, tags=None,
               restart_primary=False):
    """Provision hosts with a playbook (default site.yml), validated before it starts."""
    _provision(playbook, inventory_, check, diff, limit, tags, restart_primary)


# ------------------------------------------------------------------ releases

@task(help={"release_id": "Release id (default: <UTC timestamp>-<git sha>[-dirty]).",
            "out": "Directory for the artifact (default: build/releases)."})
@friendly
def release_build(c, release_id=None, out="build/releases"):
    """Build a release artifact: the service, its wheels and a manifest with the payload checksum."""
    built = builder.build(Path(ROOT) / out, release_id)
    m = built.manifest
    print(f"release {m.release_id}: {built.path} ({built.size / 1e6:.1f} MB, "
          f"payload sha256 {m.payload_sha256[:16]}...)")


@task(help={"artifact": "Path of the artifact to check."})
@friendly
def release_verify(c, artifact):
    """Check a release artifact's manifest and payload checksum."""
    m = release.verify(Path(artifact))
    print(f"release {m.release_id}: ok (git {m.git_sha[:12]}, built {m.built_at})")


# ------------------------------------------------------------------ main job

@task(help={"stream_hosts": "Number of stream hosts (default 3)."})
@friendly
def up(c, stream_hosts=lab.DEFAULT_STREAM_HOSTS):
    """Bring up the lab and run the main job: provision every tier, deploy the stream service, serve it."""
    _print_status(lab.up(int(stream_hosts)))
    _provision("site")
    inv = inventory.load("lab")
    deploy.build_and_deploy(inv, Path(ROOT) / "build" / "releases", "inv up", Reporter(), seed=True)
    fleet_ = Fleet.from_inventory(inv)
    _fleet_check()
    url = f"http://{fleet_.balancer.address}"
    print(f"\nThe stack is up. Try:\n  curl {url}/tracks\n  curl -r 0-99 -o /dev/null -w '%{{http_code}}\\n' "
          f"{url}/tracks/1/audio\n  .venv/bin/fab releases  # and fab audit, fab lock.status")


# ------------------------------------------------------------------ quality

def _shellcheck(c) -> None:
    try:
        programs = roadie_lint.shell_programs()
    except RoadieError as exc:
        raise Exit(f"error: {exc}", code=1) from None
    if not shutil.which("shellcheck"):
        raise Exit("error: shellcheck is missing: apt-get install shellcheck (bin/bootstrap installs it)", code=1)
    print(f"shellcheck: {len(programs)} shell programs")
    with c.cd(ROOT):
        c.run(shlex.join(roadie_lint.shellcheck_argv(programs)))


@task
def lint(c):
    """Run ruff, yamllint, shellcheck (every shell program) and ansible-lint (production profile)."""
    c.run(f"{_bin('ruff')} check .")
    c.run(f"{_bin('yamllint')} --strict .")
    _shellcheck(c)
    c.run(f"{_bin('ansible-lint')} --profile production")


@task(help={"lab": "Also bring up the lab and run the lab tests (default: yes).",
            "molecule": "Also run every role's molecule scenarios (default: yes).",
            "down": "Remove the lab when the tests are done.",
            "k": "Only tests matching this pytest -k expression."})
def test(c, lab=True, molecule=True, down=False, k=None):
    """Run the whole test suite: lint, unit tests, molecule, then the lab tests against real hosts."""
    started = time.monotonic()

    def phase(name: str) -> None:
        print(f"test: {name} done at {time.monotonic() - started:.0f} s", flush=True)

    # Lint and the unit tests each keep one core busy: they run side by side, lint's output after the tests'.
    log = Path(ROOT) / "logs" / "lint.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        linting = subprocess.Popen([_bin("inv"), "lint"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        select = f" -k {k!r}" if k else ""
        try:
            unit_ok = c.run(f"{_bin('pytest')} tests/unit tests/service -q{select}", warn=True).ok
        finally:
            lint_code = linting.wait()
    print(log.read_text(), end="", flush=True)
    if lint_code != 0 or not unit_ok:
        failed = [name for name, bad in (("lint", lint_code != 0), ("unit and service tests", not unit_ok)) if bad]
        raise Exit(f"error: {' and '.join(failed)} failed", code=1)
    phase("lint, unit and service tests")
    if molecule:
        molecule_(c)
        phase("molecule")
    if lab:
        try:
            lab_up(c)
            phase("lab up")
            c.run(f"{_bin('pytest')} tests/lab -m lab -q --durations=40{select}")
            phase("lab tests")
        finally:
            if down:
                lab_down(c)


@task(help={"role": "Only this role (default: every role with a molecule scenario).",
            "scenario": "Only this scenario (default: all of the role's scenarios).",
            "workers": "Scenarios run side by side (default 2; each has its own containers)."})
@friendly
def molecule_(c, role=None, scenario=None, workers=2):
    """Run molecule test (create, converge, idempotence, verify, destroy) for the roles."""
    chosen = molecule.scenarios(Path(ROOT) / "roles", role, scenario)
    if not chosen:
        raise Exit(f"error: no molecule scenario for role={role!r} scenario={scenario!r}", code=1)
    engine.ensure_tools()
    engine.ensure_docker()
    engine.ensure_image()
    started = time.monotonic()
    outcomes = molecule.run_all(chosen, Path(ROOT) / "roles", Path(ROOT) / "logs" / "molecule", workers=int(workers))
    failed = [o.scenario.label for o in outcomes if not o.ok]
    print(f"molecule: {len(outcomes) - len(failed)} of {len(outcomes)} scenarios passed in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    if failed:
        raise Exit(f"error: molecule failed: {', '.join(failed)}", code=1)


@task
def unit(c):
    """Run the unit tests only (no hosts)."""
    c.run(f"{_bin('pytest')} tests/unit -q")


@task
def layout(c):
    """Print the modules over 300 lines and the Fabric task bodies over 20 lines (a report; exits 0)."""
    c.run(shlex.join([_bin("python"), os.path.join(ROOT, "scripts", "layout_figures.py")]))


BENCHMARKS = ("lab", "converge", "provision", "deploy", "fanout", "stdin", "audio")


@task(help={"which": f"Benchmarks to run, comma-separated: {', '.join(BENCHMARKS)} or all (default: all)."})
def bench(c, which="all"):
    """Run benchmarks from bench/ and print their figures (they use the lab; minutes each)."""
    chosen = BENCHMARKS if which == "all" else tuple(w.strip() for w in which.split(","))
    unknown = [w for w in chosen if w not in BENCHMARKS]
    if unknown:
        raise Exit(f"error: unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)}, all)", code=1)
    for name in chosen:
        c.run(f"{_bin('python')} bench/{name}.py")


lab_ns = Collection("lab")
lab_ns.add_task(lab_up, "up", default=False)
lab_ns.add_task(lab_down, "down")
lab_ns.add_task(lab_status, "status")
lab_ns.add_task(lab_ssh, "ssh")
lab_ns.add_task(lab_check, "check")
lab_ns.add_task(lab_image, "image")

release_ns = Collection("release")
release_ns.add_task(release_build, "build")
release_ns.add_task(release_verify, "verify")

ns = Collection(up, lint, test, unit, bench, layout)
ns.add_collection(release_ns)
ns.add_task(molecule_, "molecule")
ns.add_task(provision_, "provision")
ns.add_collection(lab_ns)
