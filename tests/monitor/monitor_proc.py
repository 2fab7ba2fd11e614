"""A monitor service in a process of its own, for tests that kill it (``kill -9``).

``python -m tests.monitor.monitor_proc <broker> <backend> <db>`` prints ``ready`` once it
consumes events, then runs until killed.
"""

from __future__ import annotations

import sys
import time

from celery import Celery

from flask_celerymon.monitor import MonitorService, MonitorSettings

if __name__ == "__main__":
    broker, backend, db = sys.argv[1:4]
    app = Celery("killed_monitor", broker=broker, backend=backend)
    svc = MonitorService(app, MonitorSettings(db=db, flush_interval=0.1, inspect_timeout=0.3))
    svc.start()
    if not svc.wait_connected(30):
        sys.exit("the monitor did not connect")
    print("ready", flush=True)
    while True:
        time.sleep(1)
