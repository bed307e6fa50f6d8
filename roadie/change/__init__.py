"""The one change pipeline: every command that changes the running fleet passes through it.

  pipeline.py  Change: the lease on the deploy lock renewed by a heartbeat, the audit record, interrupts
  lock.py      the deploy lock on the lock host (the first balancer): one holder at a time
  audit.py     the audit log: one hash-chained record per change, on the fleet and on this machine
  rotation.py  stream hosts out of rotation on purpose: who drained them, why and when
  rollout.py   the rollout planner: batches, canary first, and a capacity guard
  lock_ops.py  what `fab lock.status` and `fab lock.release` do
"""
