"""The redis role's default ACL for the app user against what the stream service uses (app/streamsvc/cache.py).

The app module holds the key prefixes and commands; the role's default must grant exactly those. A new
prefix or command in the app, or a wider rule in the role, fails here before it reaches a host.
tests/service runs the service against a real Redis under the same rules and checks what it sends.
"""

import re
import sys

import pytest
import yaml

from roadie.core.paths import ROOT

if str(ROOT / "app") not in sys.path:
    sys.path.insert(0, str(ROOT / "app"))
from streamsvc import cache

REDIS_ROLE = ROOT / "roles" / "redis"

DEFAULTS = yaml.safe_load((REDIS_ROLE / "defaults" / "main.yml").read_text())
RULES = DEFAULTS["redis_app_acl_rules"]


def acl_problems(rules: str) -> list[str]:
    """What keeps `rules` from granting exactly the app's key prefixes and commands; [] when nothing does."""
    tokens = rules.split()
    keys, commands, other = [], [], []
    for token in tokens:
        if re.fullmatch(r"~[^*?\[\]\\]+\*", token):
            keys.append(token[1:-1])
        elif re.fullmatch(r"\+[a-z_]+", token):
            commands.append(token[1:])
        elif token not in ("resetkeys", "resetchannels", "-@all"):
            other.append(token)  # a category, all-keys, a channel, a read-only key, a subcommand, a template ...
    problems = []
    if other:
        problems.append(f"not a reset, a key prefix or a single command: {other}")
    if sorted(keys) != sorted(cache.KEY_PREFIXES):
        problems.append(f"key prefixes {sorted(keys)}, the app uses {sorted(cache.KEY_PREFIXES)}")
    if sorted(commands) != sorted(cache.COMMANDS):
        problems.append(f"commands {sorted(commands)}, the app sends {sorted(cache.COMMANDS)}")
    # Rules apply left to right: the resets come first, so the string means the same in ACL SETUSER.
    for reset, grant in (("resetkeys", "~"), ("-@all", "+"), ("resetchannels", None)):
        granted = [i for i, t in enumerate(tokens) if grant and t.startswith(grant)]
        if reset not in tokens or (granted and tokens.index(reset) > granted[0]):
            problems.append(f"{reset} must come before every {grant or 'channel'} rule")
    return problems


def test_the_role_default_grants_exactly_the_app_prefixes_and_commands():
    assert acl_problems(RULES) == []
    assert len(set(cache.KEY_PREFIXES)) == len(cache.KEY_PREFIXES)
    assert len(set(cache.COMMANDS)) == len(cache.COMMANDS)


@pytest.mark.parametrize("rules", [
    "~* &* +@all -@dangerous -@admin",                                                    # the old default
    "resetkeys ~tracks:* ~plays:* resetchannels -@all +ping +get +set +incrby",            # a wider prefix
    "resetkeys ~tracks:v1:* resetchannels -@all +ping +get +set +incrby",                  # a prefix missing
    "resetkeys ~tracks:v1:* ~plays:* resetchannels -@all +ping +get +set +incrby +eval",   # a command too many
    "resetkeys ~tracks:v1:* ~plays:* resetchannels -@all +ping +get +set",                 # one too few
    "resetkeys ~tracks:v1:* ~plays:* resetchannels +ping +get +set +incrby -@all",         # grants undone
    "resetkeys ~tracks:v1:* ~plays:* resetchannels -@all +ping +get +set +incrby +@read",  # a category
    "resetkeys ~tracks:v1:* ~plays:* %R~* resetchannels -@all +ping +get +set +incrby",    # reads anything
    "resetkeys ~tracks:v1:* ~plays:* &* -@all +ping +get +set +incrby",                    # every channel
    "~tracks:v1:* ~plays:* resetchannels -@all +ping +get +set +incrby",                   # keeps old keys
])
def test_rules_wider_or_narrower_than_the_app_are_reported(rules):
    assert acl_problems(rules) != []


def test_every_key_the_app_builds_starts_with_one_of_its_prefixes():
    """The key expressions in cache.py use the prefix constants (a new literal prefix would bypass them)."""
    source = (ROOT / "app" / "streamsvc" / "cache.py").read_text()
    calls = [c for c in re.findall(r"self\._redis\.(\w+)\(([^,)]*)", source) if c[0] != "close"]  # close: no command
    assert {name for name, _ in calls} == {"ping", "get", "set", "incr"}  # incr is sent as INCRBY
    keys = [arg.strip() for name, arg in calls if name != "ping"]
    assert keys and all(re.match(r"(KEY_PREFIX|f\"\{PLAYS_PREFIX\})", key) for key in keys), keys
    assert all(prefix.endswith(":") for prefix in cache.KEY_PREFIXES)


def test_the_argument_spec_default_is_the_defaults_file_value():
    spec = yaml.safe_load((REDIS_ROLE / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert options["redis_app_acl_rules"]["default"] == RULES
    assert options["redis_app_user"]["default"] == DEFAULTS["redis_app_user"]


def test_the_role_preflight_accepts_its_own_default():
    """The preflight refuses passwords and on/off in the rules; its pattern must let the default through."""
    tasks = yaml.safe_load((REDIS_ROLE / "tasks" / "preflight.yml").read_text())
    checks = [c for t in tasks for c in t.get("ansible.builtin.assert", {}).get("that", [])
              if isinstance(c, str) and c.startswith("redis_app_acl_rules is not search(")]
    assert len(checks) == 1
    pattern = re.fullmatch(r"redis_app_acl_rules is not search\('(.*)'\)", checks[0]).group(1)
    assert re.search(pattern, RULES) is None
    assert re.search(pattern, RULES + " nopass") is not None  # the pattern was read, and it bites
