"""Changing what the serving fleet runs: release artifacts, rolling deploys and rollbacks, drains,
restarts and maintenance mode, each through the one change pipeline (roadie/change/).

  release.py         the release artifact: what it holds (manifest, payload), its id, verifying one
  builder.py         building an artifact offline and reproducibly from the working tree
  wheelhouse.py      the controller's cached wheels, and a release's dependency set (one venv each)
  artifacts.py       the artifact a deploy ships: one built earlier, a file, or a fresh build
  stream_host.py     one stream host over SSH: its releases, staging one, switching `current`, migrations
  host_space.py      the room a release needs on a stream host, measured before anything is uploaded
  stream_service.py  the stream service on a host: restart, /healthz, the health gate
  balancer.py        HAProxy's runtime API on the balancer: drain, wait for sessions, enable, read state
  deploy.py          rolling deploys and rollbacks behind HAProxy: the plan's order, then the executor
  executor.py        Rollout: runs a plan batch by batch (guard, drain, switch, restart, health gate, enable)
  staging.py         staging a release on every stream host at once, before anything is switched
  types.py           a rollout's Options, Reporter and Outcome
  maintenance.py     on-call changes: drain and undrain, rolling restarts, maintenance mode
  restarts.py        `fab restart`: which hosts restart how, checked and shown first
  stream_fleet.py    what `fab deploy`, `rollback`, `releases`, `seed`, `drain` and `undrain` do with their flags
"""
