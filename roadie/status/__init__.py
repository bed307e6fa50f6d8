"""Looking at the fleet: what on-call reads before and while it acts.

  probe.py      every host's row for `fab status`, one SSH round trip each, and the lock host's view
  report.py     what needs attention across those rows (`attention`), and the status table
  ops.py        logs and disks over SSH
  netpolicy.py  the network policy an inventory expects, and a probe that measures it
  oncall.py     what fab's on-call tasks do with their flags: hosts, check, status, logs, disk, run, audit
"""
