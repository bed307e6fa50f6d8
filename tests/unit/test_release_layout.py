"""The deploy code's release layout is the one the streaming role creates (roles/streaming/vars/main.yml)."""

import yaml

from roadie.core.paths import ROOT
from roadie.deploy import stream_host

ROLE_VARS = yaml.safe_load((ROOT / "roles" / "streaming" / "vars" / "main.yml").read_text())


def test_the_deploy_code_writes_where_the_streaming_role_lays_releases_out():
    assert {
        "root": str(stream_host.BASE), "releases": str(stream_host.RELEASES), "venvs": str(stream_host.VENVS),
        "current": str(stream_host.CURRENT), "env file": str(stream_host.ENV_FILE),
    } == {
        "root": ROLE_VARS["__streaming_root"], "releases": ROLE_VARS["__streaming_releases"],
        "venvs": ROLE_VARS["__streaming_venvs"], "current": ROLE_VARS["__streaming_current"],
        "env file": ROLE_VARS["__streaming_env_file"],
    }
