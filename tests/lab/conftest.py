"""Lab tests run against the real lab over SSH; the session brings it up if it is not (idempotent)."""

import pytest

from roadie import inventory, lab


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab_inventory() -> inventory.Inventory:
    states = lab.status() if lab.docker_running() else []
    if not states or not all(s.ssh for s in states):
        lab.up()
    return inventory.load("lab")
