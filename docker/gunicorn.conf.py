"""gunicorn settings for `fleet serve` and the container image. Each value can be overridden from the
environment (GUNICORN_CMD_ARGS) or by `fleet serve` flags."""

import os

bind = os.environ.get("FLEET_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("FLEET_WORKERS", "2"))
threads = int(os.environ.get("FLEET_THREADS", "4"))
worker_class = "gthread"
# Recycle workers now and then so a slow leak cannot grow without bound; jitter avoids all restarting at once.
max_requests = 20000
max_requests_jitter = 2000
timeout = 30
graceful_timeout = 20
accesslog = "-"
errorlog = "-"
