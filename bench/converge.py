"""No-change converge of site.yml on the provisioned lab: Roadie's settings against stock Ansible.

    .venv/bin/python bench/converge.py [--runs 2] [--fallback]

Both sides run the same playbooks against the same hosts, alternating (stock, Roadie, stock, ...) so
a noisy machine affects both. Roadie: ansible.cfg as committed plus the strategy every Roadie run gets
(roadie/lab/provision.py: Mitogen when it loads). Stock: ansible-core's defaults (no pipelining, forks 5,
implicit gathering in every play, in-memory facts only, built-in linear strategy, no ControlPersist),
with host keys still checked against the lab's known_hosts and the interpreter named, as in Roadie's
config. --fallback adds a third side: Roadie's settings with the built-in linear strategy (what runs
when Mitogen cannot be used), to show what Mitogen itself is worth. The last Roadie run is profiled
(ansible.posix.profile_tasks); its slowest tasks are printed.
Expects a provisioned lab (`inv up` or `inv provision`); changes nothing on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import profile_lines, report
from roadie.core.paths import ROOT
from roadie.lab import provision, strategy

STOCK_CFG = """\
# Stock ansible-core settings, except what keeps the comparison honest: the same inventory, roles
# and vault, the interpreter named (no discovery), and host keys checked strictly.
[defaults]
inventory = {root}/inventories/lab
roles_path = {root}/roles
host_key_checking = True
vault_password_file = {root}/.lab/vault-pass
interpreter_python = /usr/bin/python3
retry_files_enabled = False
nocows = True

[ssh_connection]
# Replaces the default "-C -o ControlMaster=auto -o ControlPersist=60s": no connection reuse.
ssh_args = -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes

[inventory]
unparsed_is_failed = True
any_unparsed_is_failed = True
ignore_patterns = known_hosts
"""


def run_stock(cfg: Path, control_dir: str) -> tuple[float, dict]:
    env = strategy.ansible_env({"ANSIBLE_CONFIG": str(cfg), "ANSIBLE_STRATEGY": "linear",
                                 "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir}, warn=False)
    env.pop("ANSIBLE_STRATEGY_PLUGINS", None)
    started = time.monotonic()
    result = subprocess.run([provision._ansible_playbook(), "-i", str(ROOT / "inventories" / "lab"),
                             str(ROOT / "playbooks" / "site.yml")], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    elapsed = time.monotonic() - started
    recap = provision.parse_recap(result.stdout)
    check(result.returncode == 0, "stock", recap, result.stdout)
    return elapsed, recap


def run_roadie(profile: bool, builtin: bool = False) -> tuple[float, dict, str]:
    extra = {strategy.MITOGEN_SWITCH: "0"} if builtin else {}
    extra |= {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "15",
             "PROFILE_TASKS_SUMMARY_ONLY": "true"} if profile else {}
    if builtin:
        os.environ[strategy.MITOGEN_SWITCH] = "0"  # the strategy is chosen from this process's environment
    try:
        run = provision.run("site", "lab", echo=False, env=extra)
    finally:
        if builtin:
            del os.environ[strategy.MITOGEN_SWITCH]
    check(run.ok, "roadie", run.recap, run.output)
    return run.duration_s, run.recap, run.output


def check(ok: bool, side: str, recap: dict, output: str) -> None:
    changed = sum(c.get("changed", 0) for c in recap.values())
    if not ok or changed:
        tail = "\n".join(output.splitlines()[-30:])
        raise SystemExit(f"bench: {side} run failed or changed {changed} tasks (provision the lab first):\n{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of each side, alternating (default 2)")
    parser.add_argument("--fallback", action="store_true",
                        help="also Roadie's settings with the built-in linear strategy (no Mitogen)")
    args = parser.parse_args()
    chosen = strategy.strategy()
    stock_s: list[float] = []
    roadie_s: list[float] = []
    builtin_s: list[float] = []
    output = ""
    with tempfile.TemporaryDirectory(prefix="roadie-stock-") as tmp:
        cfg = Path(tmp) / "ansible.cfg"
        cfg.write_text(STOCK_CFG.format(root=ROOT))
        for i in range(args.runs):
            elapsed, recap = run_stock(cfg, tmp)
            stock_s.append(elapsed)
            print(f"  stock run {i + 1}: {elapsed:.1f} s ({len(recap)} hosts, changed=0)", flush=True)
            elapsed, recap, output = run_roadie(profile=i == args.runs - 1)
            roadie_s.append(elapsed)
            print(f"  roadie run {i + 1}: {elapsed:.1f} s ({len(recap)} hosts, changed=0)", flush=True)
            if args.fallback:
                elapsed, _, _ = run_roadie(profile=False, builtin=True)
                builtin_s.append(elapsed)
                print(f"  roadie with built-in linear run {i + 1}: {elapsed:.1f} s", flush=True)
    tasks = sum(c.get("ok", 0) + c.get("skipped", 0) for c in recap.values())
    stock, roadie = statistics.median(stock_s), statistics.median(roadie_s)
    slowest = profile_lines(output)
    rows = [(f"stock settings (median of {args.runs})", f"{stock:.1f} s  {[round(s, 1) for s in stock_s]}"),
            (f"Roadie, strategy {chosen.name} (median of {args.runs})",
             f"{roadie:.1f} s  {[round(s, 1) for s in roadie_s]}"),
            ("stock / Roadie", f"{stock / roadie:.2f}x"),
            *([(f"Roadie settings, built-in linear (median of {args.runs})",
                f"{statistics.median(builtin_s):.1f} s  {[round(s, 1) for s in builtin_s]}; "
                f"stock / this {stock / statistics.median(builtin_s):.2f}x")] if builtin_s else []),
            ("hosts, task results per run", f"{len(recap)}, {tasks}")]
    rows += [(f"slowest Roadie task {i + 1}", line) for i, line in enumerate(slowest[:8])]
    report("converge", rows, {"stock_s": stock_s, "roadie_s": roadie_s, "stock_median_s": stock,
                              "roadie_median_s": roadie,
                              "builtin_linear_s": builtin_s, "ratio": stock / roadie, "strategy": chosen.name,
                              "hosts": len(recap), "task_results": tasks, "roadie_profile": slowest})


if __name__ == "__main__":
    main()
