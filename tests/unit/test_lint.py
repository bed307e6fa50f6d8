"""`inv lint`'s list of shell programs (roadie/lab/lint.py): found by their shebang, never a template."""

import pytest

from roadie.core.errors import RoadieError
from roadie.core.paths import ROOT
from roadie.lab import lint


def test_every_shell_program_of_the_checkout_is_found_and_none_is_a_template():
    found = {str(p) for p in lint.shell_programs(ROOT)}
    assert {"bin/bootstrap", ".ci/run", "roles/postgresql/files/pg-base-backup",
            "roles/postgresql/files/pg-restore-check", "roles/postgresql/files/pg-conf-check",
            "roles/streaming/files/stream-task", "roles/haproxy/files/haproxy-save-server-state",
            "roles/haproxy/files/roadie-haproxy"} <= found
    assert not any(p.endswith(".j2") or p.startswith(".venv/") for p in found)


def test_programs_are_found_by_their_shebang(tmp_path):
    for name, first in {"a": "#!/bin/sh", "b": "#!/usr/bin/env bash", "c": "#! /bin/bash -eu", "d": "#!/usr/bin/bash",
                        "e": "#!/usr/bin/python3", "f": "#!/bin/shell", "g": "echo #!/bin/sh", "h": ""}.items():
        (tmp_path / "files").mkdir(exist_ok=True)
        (tmp_path / "files" / name).write_text(first + "\necho hi\n")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("#!/bin/sh\n")
    assert [str(p) for p in lint.shell_programs(tmp_path)] == ["files/a", "files/b", "files/c", "files/d"]
    assert lint.shellcheck_argv(lint.shell_programs(tmp_path))[:2] == ["shellcheck", "--norc"]


def test_a_shell_program_written_as_a_role_template_is_refused(tmp_path):
    template = tmp_path / "roles" / "x" / "templates" / "usr" / "local" / "sbin" / "helper.j2"
    template.parent.mkdir(parents=True)
    template.write_text("#!/bin/bash\nreadonly X={{ x }}\n")
    with pytest.raises(RoadieError, match=r"shell programs as templates: roles/x/templates/.*/helper.j2"):
        lint.shell_programs(tmp_path)
