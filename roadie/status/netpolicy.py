"""The expected network policy of an inventory (which TCP connections must succeed), and a probe that measures it.

The policy lives in `<inventory>/group_vars/all/network-policy.yml` as `network_policy_expected`, written
independently of the firewall variables; tests/lab/test_network_policy.py compares it with what the hosts'
firewalls really let through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from roadie import remote
from roadie.core.errors import RoadieError
from roadie.core.inventory import Inventory

CONTROLLER = "controller"
POLICY_FILE = Path("group_vars") / "all" / "network-policy.yml"
POLICY_VAR = "network_policy_expected"

# What a probe can see. Only "open" is a connection; "refused" (RST) and "timeout" (dropped) are both closed.
OPEN, REFUSED, TIMEOUT = "open", "refused", "timeout"

# roadie/remote/: run on a source host (and on the controller), it measures which TCP connections open.
PROBE_PROGRAM = "reach_probe.py"
# The program's text, for callers that send or run it themselves (python3 -c PROBE_SCRIPT TIMEOUT TARGETS).
PROBE_SCRIPT = remote.source(PROBE_PROGRAM)


@dataclass(frozen=True)
class Policy:
    """The expected reachability: `allowed[source][destination]` lists TCP ports that must connect."""

    controller_address: str
    probe_ports: tuple[int, ...]
    closed_port: int
    allowed: dict[str, dict[str, tuple[int, ...]]]

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port probed: the ones roles open, then the closed control."""
        return (*self.probe_ports, self.closed_port)


def _port(value: object, where: str) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise RoadieError(f"{where}: {value!r} is not a TCP port")
    return value


def load(inventory_dir: Path) -> Policy:
    """The policy of an inventory directory; a malformed file fails in one line."""
    path = inventory_dir / POLICY_FILE
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RoadieError(f"{where}: cannot read the network policy: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or set(data) != {POLICY_VAR} or not isinstance(data[POLICY_VAR], dict):
        raise RoadieError(f"{where}: must define exactly one variable, {POLICY_VAR} (a mapping)")
    body = data[POLICY_VAR]
    expected_keys = {"controller_address", "probe_ports", "closed_port", "allowed"}
    if set(body) != expected_keys:
        raise RoadieError(f"{where}: {POLICY_VAR} needs exactly the keys {sorted(expected_keys)}")
    if not isinstance(body["probe_ports"], list) or not body["probe_ports"]:
        raise RoadieError(f"{where}: probe_ports must be a non-empty list")
    probe_ports = tuple(_port(p, f"{where}: probe_ports") for p in body["probe_ports"])
    closed_port = _port(body["closed_port"], f"{where}: closed_port")
    if closed_port in probe_ports:
        raise RoadieError(f"{where}: closed_port {closed_port} is also a probe port")
    if not isinstance(body["allowed"], dict):
        raise RoadieError(f"{where}: allowed must map sources to destinations to ports")
    allowed: dict[str, dict[str, tuple[int, ...]]] = {}
    for source, destinations in body["allowed"].items():
        if not isinstance(destinations, dict):
            raise RoadieError(f"{where}: allowed.{source} must map destinations to port lists")
        allowed[str(source)] = {}
        for destination, ports in destinations.items():
            if not isinstance(ports, list):
                raise RoadieError(f"{where}: allowed.{source}.{destination} must be a list of ports")
            checked = tuple(_port(p, f"{where}: allowed.{source}.{destination}") for p in ports)
            unknown = [p for p in checked if p not in probe_ports]
            if unknown:
                raise RoadieError(f"{where}: allowed.{source}.{destination}: port {unknown[0]} is not in probe_ports")
            allowed[str(source)][str(destination)] = checked
    return Policy(str(body["controller_address"]), probe_ports, closed_port, allowed)


def check_names(policy: Policy, inventory: Inventory) -> None:
    """Every source and destination is an inventory group, "all" or the controller (a destination never is)."""
    groups = set(inventory.groups) - {"ungrouped"}
    for source, destinations in policy.allowed.items():
        if source != CONTROLLER and source not in groups:
            raise RoadieError(f"network policy: source {source!r} is not a group of inventory {inventory.name}")
        for destination in destinations:
            if destination not in groups:
                raise RoadieError(f"network policy: destination {destination!r} (from {source}) is not a group "
                                  f"of inventory {inventory.name}")


def expected(policy: Policy, inventory: Inventory) -> dict[tuple[str, str, int], bool]:
    """(source, destination host, port) -> must connect, for every host and the controller as sources."""
    check_names(policy, inventory)
    sources = [CONTROLLER, *inventory.hosts]
    result: dict[tuple[str, str, int], bool] = {}
    for source in sources:
        source_groups = {CONTROLLER} if source == CONTROLLER else {"all", *inventory.hosts[source].groups}
        for destination, host in inventory.hosts.items():
            if destination == source:
                continue
            destination_groups = {"all", *host.groups}
            open_ports = {port for group in source_groups for dest_group, ports in policy.allowed.get(group, {}).items()
                          if dest_group in destination_groups for port in ports}
            for port in policy.ports:
                result[(source, destination, port)] = port in open_ports
    return result


def probe_targets(inventory: Inventory, source: str, policy: Policy) -> list[tuple[str, int, str]]:
    """(address, port, destination name) for every other host and every probed port."""
    return [(host.address, port, name) for name, host in inventory.hosts.items() if name != source
            for port in policy.ports]


def parse_probe_output(stdout: str, count: int) -> list[str]:
    """The outcomes the probe (roadie/remote/reach_probe.py) printed; anything else fails in one line."""
    try:
        outcomes = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RoadieError(f"network probe printed no result: {stdout.strip()[:200]!r}") from None
    if not isinstance(outcomes, list) or len(outcomes) != count:
        raise RoadieError(f"network probe returned {len(outcomes) if isinstance(outcomes, list) else '?'} "
                          f"outcomes for {count} targets")
    return [str(o) for o in outcomes]


def mismatches(wanted: dict[tuple[str, str, int], bool], got: dict[tuple[str, str, int], str]) -> list[str]:
    """Every difference, one line each: `src -> dst:port expected X got Y`, X open or closed."""
    lines = []
    for key in sorted(wanted, key=lambda k: (k[0] != CONTROLLER, k)):
        source, destination, port = key
        outcome = got.get(key, "not probed")
        if wanted[key] != (outcome == OPEN):
            lines.append(f"{source} -> {destination}:{port} expected {'open' if wanted[key] else 'closed'} "
                         f"got {outcome}")
    return lines
