"""The lab, and what runs from this machine against any inventory's hosts with Ansible.

  lab.py        the lab's hosts: address plan, containers on the lab network, up, down, status
  engine.py     the Docker engine and the lab's base image (debootstrap, rebuilt when the recipe changes)
  keys.py       the lab key, the hosts' keys in the lab's known_hosts, ssh for an interactive login
  provision.py  run a playbook against an inventory, checked before it starts
  strategy.py   the Ansible strategy of every run (Mitogen's when it loads) and ansible's environment
  molecule.py   the roles' molecule scenarios, a few at a time
  lint.py       every shell program in the checkout, for `inv lint` (shellcheck)
"""
