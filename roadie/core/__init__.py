"""What every other part of Roadie stands on.

  errors.py     RoadieError, the one exception for problems an operator can fix (and Interrupted)
  paths.py      where things live in a checkout
  inventory.py  the Ansible inventory: the one host list Ansible, Fabric and the lab share
  ssh.py        SSH to inventory hosts with Fabric, host keys always verified; parallel runs
  cli.py        glue between the thin CLIs and the package: one-line errors, tables, JSON, questions
  vault.py      secrets: the lab's generated vault, any inventory's vault read without printing it
  contract.py   the host contract: paths, units, ports and names the roles decide
  fleet.py      the fleet (the stream hosts behind their balancer, read once) and the fleet check
"""
