"""Redis on the cache hosts.

  client.py    the one Redis client: the admin user, port and password a host's Redis takes; INFO, key
               counts and flushes (roadie/remote/redis_cache.py); PING for the restart health check
  commands.py  what fab's cache tasks do around it: check input, ask, guard, audit
"""
