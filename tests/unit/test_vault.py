"""The lab's generated vault: random, encrypted, stable across runs, never in plain text."""

import pytest

from roadie.core import vault
from roadie.core.errors import RoadieError


@pytest.fixture
def paths(tmp_path):
    return tmp_path / "group_vars" / "all" / "vault.yml", tmp_path / "vault-pass"


def test_lab_vault_is_generated_encrypted_and_private(paths):
    vault_file, password_file = paths
    assert vault.ensure_lab_vault(vault_file, password_file) == list(vault.SECRET_NAMES)
    raw = vault_file.read_bytes()
    assert raw.startswith(b"$ANSIBLE_VAULT;1.1;AES256")
    values = vault.read(vault_file, password_file)
    assert set(values) == set(vault.SECRET_NAMES)
    assert all(len(v) >= 24 for v in values.values())
    assert len(set(values.values())) == len(values)
    for value in values.values():
        assert value.encode() not in raw
    assert vault_file.stat().st_mode & 0o777 == 0o600
    assert password_file.stat().st_mode & 0o777 == 0o600


def test_second_run_keeps_every_value(paths):
    vault.ensure_lab_vault(*paths)
    before = vault.read(*paths)
    assert vault.ensure_lab_vault(*paths) == []
    assert vault.read(*paths) == before


def test_missing_secret_is_added_and_the_others_kept(paths):
    vault_file, password_file = paths
    vault.ensure_lab_vault(vault_file, password_file)
    values = vault.read(vault_file, password_file)
    del values["vault_redis_admin_password"]
    import yaml
    vault_file.write_bytes(vault._vault(password_file).encrypt(yaml.safe_dump(values).encode()))
    assert vault.ensure_lab_vault(vault_file, password_file) == ["vault_redis_admin_password"]
    after = vault.read(vault_file, password_file)
    assert {k: after[k] for k in values} == values


def test_wrong_password_is_one_clear_line(paths, tmp_path):
    vault_file, _ = paths
    vault.ensure_lab_vault(*paths)
    wrong = tmp_path / "wrong-pass"
    wrong.write_text("not-the-password\n")
    with pytest.raises(RoadieError, match="wrong vault password") as err:
        vault.read(vault_file, wrong)
    assert "\n" not in str(err.value)


def test_plain_text_vault_is_refused(paths):
    vault_file, password_file = paths
    vault_file.parent.mkdir(parents=True)
    vault_file.write_text("vault_redis_app_password: hunter2\n")
    password_file.write_text("x\n")
    with pytest.raises(RoadieError, match="not encrypted"):
        vault.read(vault_file, password_file)


def test_missing_password_file(paths):
    vault_file, password_file = paths
    vault.ensure_lab_vault(vault_file, password_file)
    password_file.unlink()
    with pytest.raises(RoadieError, match="vault password file .* is missing"):
        vault.read(vault_file, password_file)
