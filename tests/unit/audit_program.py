"""The audit log's root helper (roles/common/files/roadie_audit.py) loaded as a module, and the evidence a
host's sshd and sudo would give it, for the unit tests of the helper and of its client."""

import importlib.util

from roadie.core.paths import ROOT

HELPER_FILE = ROOT / "roles/common/files/roadie_audit.py"
_SPEC = importlib.util.spec_from_file_location("roadie_audit", HELPER_FILE)
helper = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(helper)

KEY = "SHA256:" + "Wz6m0gkzXo5e0WIKZNeWtHeVT7c3P2d3F0hWbGq7Ojg"
OTHER_KEY = "SHA256:" + "A" * 43
EVIDENCE = {"sudo_user": "deploy", "ssh_key": KEY, "ssh_key_type": "ED25519", "ssh_from": "10.0.0.9"}
