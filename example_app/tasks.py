"""The example's tasks: plain functions submitted by reference, and registered Celery tasks."""

from __future__ import annotations

import logging
import random
import time

from flask import Flask

from flask_celerymon import current_task

from . import celery

log = logging.getLogger(__name__)


def add(x: int, y: int) -> int:
    """A plain function: ``celery.submit(add, 1, 2)`` runs it on a worker."""
    return x + y


def build_report(pages: int) -> dict:
    """A slow job that reports its progress (shown on the page and in the monitor)."""
    for page in range(1, pages + 1):
        time.sleep(1)
        current_task.update_state(state="PROGRESS", meta={"done": page, "total": pages})
    return {"pages": pages}


def charge_card(order_id: int) -> None:
    """Always fails, so the monitor has a failure (with its traceback) to show."""
    raise RuntimeError(f"card declined for order {order_id}")


@celery.task(bind=True, max_retries=3, default_retry_delay=2)
def sync_inventory(self, sku: str) -> str:
    """Fails twice, then succeeds: retries show up in the monitor."""
    if self.request.retries < 2:
        raise self.retry(exc=ConnectionError(f"warehouse API timed out for {sku}"))
    return f"{sku} synced after {self.request.retries} retries"


@celery.task(queue="high-priority")
def send_receipt(order_id: int) -> str:
    """Always sent to the high-priority queue, served by the "priority" worker."""
    time.sleep(random.uniform(0.1, 0.5))
    return f"receipt for order {order_id} sent"


@celery.schedule(30, name="cleanup-carts")
def cleanup_carts() -> int:
    """Runs every 30 seconds under beat."""
    removed = random.randint(0, 5)
    log.info("removed %s abandoned carts", removed)
    return removed


def register(app: Flask) -> None:
    """Nothing to do: decorated tasks are registered by ``celery.init_app``. Kept as the place
    where an app would add its own task routes or signals."""
