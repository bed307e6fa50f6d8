"""The stream service's egress table (roles/streaming), rendered here from the lab inventory.

The service's user may connect to the database hosts on the PostgreSQL port, the cache on the Redis port
and loopback, nothing else; the host firewall of the common role includes the table's file, so a boot or
a reload of it loads the table too. tests/lab/test_stream_egress.py tries the connections on a real host.
"""

import fnmatch
import functools
import re
import shutil
import subprocess

import jinja2
import pytest
import yaml

from roadie.core import inventory
from roadie.core.paths import ROOT

STREAMING = ROOT / "roles" / "streaming"
COMMON = ROOT / "roles" / "common"
STREAMING_DEFAULTS = yaml.safe_load((STREAMING / "defaults" / "main.yml").read_text())
COMMON_DEFAULTS = yaml.safe_load((COMMON / "defaults" / "main.yml").read_text())
EGRESS_TEMPLATE = STREAMING / "templates" / "etc" / "nftables.d" / "roadie-stream-egress.nft.j2"
UID = 64999
ALLOW = re.compile(r"^\t\t(ip6?) daddr \{ (.+) \} tcp dport (\d+) accept comment \"(\w+)\"$")


def _render(path, variables: dict) -> str:
    """A role template rendered as the template module does (trim_blocks), with the Ansible filters it uses."""
    env = jinja2.Environment(  # noqa: S701 - an nftables ruleset, not HTML
        undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters["comment"] = lambda text: "#\n# " + text + "\n#"
    env.tests["search"] = lambda value, pattern: re.search(pattern, value) is not None
    return env.from_string(path.read_text()).render({"ansible_managed": "Ansible managed", **variables})


@functools.cache
def _lab_addresses() -> dict[str, list[str]]:
    """The private addresses of the lab's database hosts and cache, as the role's defaults pick them."""
    lab = inventory.load("lab")

    def addresses(group: str) -> list[str]:
        return [lab.host_var(host, "roadie_private_address") for host in lab.groups[group]]

    return {"primary": addresses("database_primary"), "replicas": addresses("database_replica"),
            "cache": addresses("cache")}


def _egress(**overrides) -> str:
    lab = _lab_addresses()
    variables = {**STREAMING_DEFAULTS, "inventory_hostname": "stream1", "__streaming_egress_uid": str(UID),
                 "streaming_database_host": lab["primary"][0], "streaming_database_replica_hosts": lab["replicas"],
                 "streaming_redis_host": lab["cache"][0], **overrides}
    return _render(EGRESS_TEMPLATE, variables)


def _chain(text: str, name: str) -> list[str]:
    body = text.split(f"\tchain {name} {{\n", 1)[1].split("\n\t}", 1)[0]
    return [line for line in body.splitlines() if line.strip()]


def test_the_service_may_reach_exactly_the_database_hosts_and_the_cache():
    lab = _lab_addresses()
    text = _egress()
    allowed = {(m[1], frozenset(m[2].split(", ")), int(m[3]), m[4])
               for m in map(ALLOW.match, _chain(text, "stream")) if m}
    assert allowed == {
        ("ip", frozenset(lab["primary"] + lab["replicas"]), STREAMING_DEFAULTS["streaming_database_port"],
         "postgresql"),
        ("ip", frozenset(lab["cache"]), STREAMING_DEFAULTS["streaming_redis_port"], "redis"),
    }
    assert len(lab["primary"] + lab["replicas"]) == 2 and len(lab["cache"]) == 1


def test_only_the_service_user_is_matched_and_everything_else_it_sends_is_rejected():
    text = _egress()
    assert _chain(text, "output") == ["\t\ttype filter hook output priority filter; policy accept;",
                                      f'\t\tmeta skuid {UID} jump stream comment "stream"']
    rules = _chain(text, "stream")
    assert rules[0] == '\t\toif "lo" accept'
    # REJECT, not DROP: a refused connect() fails at once (TCP reset), never after a timeout.
    assert rules[-2:] == ['\t\tmeta l4proto tcp counter reject with tcp reset comment "anything else"',
                          '\t\tcounter reject with icmpx admin-prohibited comment "anything else"']
    # The metrics listener may answer (an established connection, from its own port); it opens nothing.
    assert rules[-3] == '\t\tct state established tcp sport 9200 accept comment "answers of the metrics listener"'
    assert all(ALLOW.match(rule) for rule in rules[1:-3])
    assert "drop" not in text.split("table inet roadie_stream_egress {", 1)[1]
    assert "sport" not in _egress(streaming_metrics_port=0)


def test_the_file_replaces_only_its_own_table():
    text = _egress()
    statements = [line for line in text.splitlines() if line and not line.startswith(("#", "\t", "}"))]
    assert statements == ["table inet roadie_stream_egress", "delete table inet roadie_stream_egress",
                          "table inet roadie_stream_egress {"]


def test_ipv6_database_hosts_get_an_ip6_rule():
    text = _egress(streaming_database_replica_hosts=["fd00::21", "10.87.0.21"])
    rules = [m.groups() for m in map(ALLOW.match, _chain(text, "stream")) if m]
    assert ("ip6", "fd00::21", "5432", "postgresql") in rules
    assert ("ip", "10.87.0.20, 10.87.0.21", "5432", "postgresql") in rules


def test_disabled_egress_removes_the_table():
    rules = [line for line in _egress(streaming_egress_enabled=False).splitlines()
             if line and not line.startswith("#")]
    assert rules == ["table inet roadie_stream_egress", "delete table inet roadie_stream_egress"]


def test_the_host_firewall_includes_the_egress_file():
    """The common role's ruleset includes the directory the streaming role writes to, after its own table."""
    assert STREAMING_DEFAULTS["streaming_egress_file"].endswith(".nft")
    ruleset = _common_ruleset(COMMON_DEFAULTS["common_firewall_include_dir"])
    includes = re.findall(r'^include "(.+)"$', ruleset, re.M)
    assert len(includes) == 1 and fnmatch.fnmatch(STREAMING_DEFAULTS["streaming_egress_file"], includes[0])
    assert ruleset.index("include ") > ruleset.index("table inet roadie {")


def _common_ruleset(include_dir: str) -> str:
    return _render(COMMON / "templates" / "etc" / "nftables.conf.j2", {
        **COMMON_DEFAULTS, "inventory_hostname": "stream1", "group_names": ["stream"], "groups": {},
        "common_ssh_allowed_sources": ["10.87.0.1/32"], "common_firewall_include_dir": include_dir})


def _nft_can_check() -> bool:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        probe = subprocess.run([nft, "-c", "-f", "/dev/null"], capture_output=True, timeout=10)
    except OSError:
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _nft_can_check(), reason="needs nft and the right to check a ruleset (root)")
def test_nft_accepts_the_host_firewall_with_the_egress_table_as_one_transaction(tmp_path):
    (tmp_path / "roadie-stream-egress.nft").write_text(_egress())
    (tmp_path / "nftables.conf").write_text(_common_ruleset(str(tmp_path)))
    nft = shutil.which("nft") or "/usr/sbin/nft"
    for ruleset in ("nftables.conf", "roadie-stream-egress.nft"):
        result = subprocess.run([nft, "-c", "-f", str(tmp_path / ruleset)], capture_output=True, text=True,
                                timeout=10)
        assert result.returncode == 0, result.stderr
    (tmp_path / "roadie-stream-egress.nft").write_text("table inet roadie_stream_egress { not a chain }\n")
    broken = subprocess.run([nft, "-c", "-f", str(tmp_path / "nftables.conf")], capture_output=True, text=True,
                            timeout=10)
    assert broken.returncode != 0   # the include is real: a broken egress file fails the whole ruleset
