"""The firewalls let through exactly the connections the network policy allows, and nothing else.

From every lab host to every other lab host, and from the controller to every lab host, on every port a
role opens plus one closed control port: a TCP connect with a short timeout, all targets of one source at
once, every source at once (over the verified Fabric connections). The expected answer comes from
inventories/lab/group_vars/all/network-policy.yml, written independently of the firewall variables.
"""

import json
import subprocess
import sys

from roadie.core import ssh
from roadie.core.paths import ROOT
from roadie.status import netpolicy

TIMEOUT_S = 2.0


def _measure(inv, policy) -> dict[tuple[str, str, int], str]:
    got: dict[tuple[str, str, int], str] = {}
    commands = {}
    for name in inv.hosts:
        targets = netpolicy.probe_targets(inv, name, policy)
        commands[name] = (targets, ssh.python_command(netpolicy.PROBE_SCRIPT, TIMEOUT_S,
                                                      json.dumps([[a, p] for a, p, _ in targets])))

    def on_host(name: str):
        targets, command = commands[name]
        result = ssh.run_parallel([inv.hosts[name]], command, timeout=60)[name]
        assert result.ok, f"{name}: probe failed: {result.error or result.stderr.strip()}"
        return name, targets, netpolicy.parse_probe_output(result.stdout, len(targets))

    def on_controller():
        targets = netpolicy.probe_targets(inv, netpolicy.CONTROLLER, policy)
        run = subprocess.run([sys.executable, "-c", netpolicy.PROBE_SCRIPT, str(TIMEOUT_S),
                              json.dumps([[a, p] for a, p, _ in targets])],
                             capture_output=True, text=True, timeout=60, check=True)
        return netpolicy.CONTROLLER, targets, netpolicy.parse_probe_output(run.stdout, len(targets))

    jobs = [on_controller, *[lambda n=n: on_host(n) for n in inv.hosts]]
    for source, targets, outcomes in ssh.parallel(lambda job: job(), jobs):
        for (_address, port, destination), outcome in zip(targets, outcomes, strict=True):
            got[(source, destination, port)] = outcome
    return got


def test_exactly_the_allowed_connections_succeed(stack, lab_inventory):
    # `stack`: a release runs, so the stream service's metrics listener is up to be probed like the rest.
    policy = netpolicy.load(ROOT / "inventories" / "lab")
    wanted = netpolicy.expected(policy, lab_inventory)
    got = _measure(lab_inventory, policy)
    assert set(got) == set(wanted)
    # The probe can see both answers: some allowed connections open, and the control port never does.
    assert any(outcome == netpolicy.OPEN for outcome in got.values())
    assert all(outcome != netpolicy.OPEN for (_s, _d, port), outcome in got.items() if port == policy.closed_port)
    problems = netpolicy.mismatches(wanted, got)
    opened = sum(1 for ok in wanted.values() if ok)
    assert not problems, (f"{len(problems)} of {len(wanted)} probes differ from the network policy "
                          f"({opened} must connect):\n" + "\n".join(problems))
