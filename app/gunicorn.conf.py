"""gunicorn settings for the stream service (production): `gunicorn -c app/gunicorn.conf.py`.

Read from the environment (the env file rendered by Ansible):
  STREAM_BIND              address to listen on (default 127.0.0.1:8000; nginx proxies to it)
  STREAM_WORKERS           worker processes (default 2)
  STREAM_THREADS           threads per worker (default 8): an audio response holds one thread
  STREAM_GRACEFUL_TIMEOUT  seconds in-flight responses get to finish on stop/restart (default 30)
  STREAM_ACCESS_LOG        "1" to log every request to stdout (default: off; nginx logs requests)
  STREAM_METRICS_BIND      host:port where the master serves the workers' metrics summed (default: none);
                           needs PROMETHEUS_MULTIPROC_DIR, a directory of the service's own
The application's own variables (STREAM_DATABASE_URL, ...) are read by streamsvc.config.
"""

import os

_here = os.path.dirname(os.path.abspath(__file__))

# The app is this directory's `streamsvc` package, built per worker by its factory.
chdir = _here
wsgi_app = "streamsvc.wsgi:create_app()"
# Each worker builds its own app after the fork: no connection is shared between processes, and a
# database that is down at boot only makes /healthz answer 503; the master keeps running.
preload_app = False

bind = [os.environ.get("STREAM_BIND", "127.0.0.1:8000")]
# gthread: long-lived audio responses each hold a thread, not the whole worker.
worker_class = "gthread"
workers = int(os.environ.get("STREAM_WORKERS", "2"))
threads = int(os.environ.get("STREAM_THREADS", "8"))
# Silent workers (no heartbeat) are replaced after this; gthread workers beat while streaming.
timeout = 30
graceful_timeout = int(os.environ.get("STREAM_GRACEFUL_TIMEOUT", "30"))
keepalive = 5

accesslog = "-" if os.environ.get("STREAM_ACCESS_LOG") == "1" else None
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
loglevel = "info"
proc_name = "streamsvc"
# gunicorn 25+ opens a control socket in $HOME by default; systemd supervises this service instead.
control_socket_disable = True


# Metrics (streamsvc/metrics.py): each worker counts into files in PROMETHEUS_MULTIPROC_DIR; the master sums
# them for a scrape on a listener of its own, which nginx and the balancer never forward to.
metrics_bind = os.environ.get("STREAM_METRICS_BIND", "")
metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if metrics_bind and not metrics_dir:
    raise SystemExit("gunicorn.conf.py: STREAM_METRICS_BIND needs PROMETHEUS_MULTIPROC_DIR (the workers' counts)")


def on_starting(server):
    # Counts left by a previous master would be summed with ours: start from none.
    if metrics_dir:
        for name in os.listdir(metrics_dir):
            if name.endswith(".db"):
                os.unlink(os.path.join(metrics_dir, name))


def when_ready(server):
    if not metrics_bind:
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    host, _, port = metrics_bind.rpartition(":")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
    start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    server.log.info("metrics on http://%s/metrics", metrics_bind)


def child_exit(server, worker):
    if metrics_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path=metrics_dir)
