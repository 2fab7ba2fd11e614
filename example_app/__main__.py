"""``python -m example_app``: the app on http://127.0.0.1:5000/ with its workers, beat and monitor.

The workers and beat are started before the web server (not lazily on the first submit), so the
monitor at /monitor shows them from the start. Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from flask_celerymon import StartError
from flask_celerymon.processes import is_loopback, port_taken

from . import celery, create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m example_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Open on loopback only: on any other address the monitor needs authentication configured.
    if port_taken(args.host, args.port):  # before any worker or beat is started
        sys.exit(f"error: cannot serve on {args.host}:{args.port}: the port is taken")
    app = create_app(open_monitor=is_loopback(args.host))
    # SIGTERM ends like Ctrl-C: through the finally below, so the monitor writes its clean stop
    # (the local processes' own handler stops them first, then calls this one)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with app.app_context():
        print(f"starting the workers and beat (logs in {app.instance_path}/celery/logs) ...")
        try:
            celery.start()
        except StartError as exc:
            sys.exit(f"error: {exc}")
        except KeyboardInterrupt:  # Ctrl-C while the workers start: they are stopped already
            sys.exit(130)
        for name, proc in celery.processes.items():
            print(f"  {name:<10} {proc.status:<8} {proc.detail}")
    url = f"http://{args.host}:{args.port}/"
    print(f"open {url}  (monitor: {url}monitor/)", flush=True)
    try:
        app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        with app.app_context():
            celery.stop()
            celery.monitor.stop()  # its pending changes and clean stop go to the history store
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
