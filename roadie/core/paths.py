"""Where things live in a Roadie checkout."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = ROOT / "inventories"
LAB_INVENTORY = INVENTORIES / "lab"
# Generated lab state (keys, known_hosts, vault password): git-ignored, never printed.
LAB_STATE = ROOT / ".lab"
LAB_SSH_DIR = LAB_STATE / "ssh"
LAB_KEY = LAB_SSH_DIR / "id_ed25519"
LAB_KNOWN_HOSTS = LAB_SSH_DIR / "known_hosts"
LAB_IMAGE_RECIPE = ROOT / "lab" / "image"
