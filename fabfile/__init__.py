"""Operations over SSH against an inventory's hosts. `fab --list` shows them; logic lives in roadie/."""

# One module per namespace; each task parses its flags, calls one roadie function and prints. deploy.py and
# oncall.py hold the root-level tasks; db, cache, lock and maintenance are namespaces (`db.backup`).

from invoke import Collection

from . import cache, db, deploy, lock, maintenance, oncall

ns = Collection(*deploy.TASKS, *oncall.TASKS, db.ns, cache.ns, lock.ns, maintenance.ns)
