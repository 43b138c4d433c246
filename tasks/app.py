"""The one Celery app, configured from :class:`nerfleet.settings.Settings`.

JSON only (a pickled message is refused), late acknowledgement, reject on a lost
worker, one message prefetched per worker (a message is already a batch of jobs).
"""

from __future__ import annotations

import ssl

from celery import Celery

from nerfleet.settings import Settings, get_settings
from nerfleet.tasks.queues import aggregate_queue, train_queue

NORMAL_PRIORITY = 5
RETRY_PRIORITY = 0


def make_app(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    app = Celery(
        "nerfleet",
        broker=s.broker_url,
        backend=s.result_backend,
        include=[
            "nerfleet.tasks.generation",
            "nerfleet.tasks.aggregation",
            "nerfleet.tasks.training",
        ],
    )
    transport = {
        "visibility_timeout": s.visibility_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 25,
        # Redis priorities: 0 is served first. Jobs taken back from a dead worker go to the front.
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        task_default_queue=aggregate_queue(),
        task_default_priority=NORMAL_PRIORITY,
        task_routes={"nerfleet.aggregate": {"queue": aggregate_queue()}, "nerfleet.train": {"queue": train_queue()}},
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if s.broker_url.startswith("rediss://"):
        reqs = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
        app.conf.broker_use_ssl = {"ssl_cert_reqs": reqs[s.redis_ssl_cert_reqs]}
    return app


app = make_app()
