"""Queue names: one queue per model, one for aggregations, one for training, all in the fleet's
namespace (``NERFLEET_NAMESPACE``), so two fleets sharing one Redis never take each other's jobs."""

from __future__ import annotations

import re

from nerfleet.settings import get_settings


def _prefixed(name: str) -> str:
    namespace = get_settings().namespace
    return f"{namespace}.{name}" if namespace else name


def generation_queue(model_name: str) -> str:
    """Each model has its own queue, so a worker holding model M only receives M's jobs."""
    return _prefixed("gen." + re.sub(r"[^A-Za-z0-9_.-]", "_", model_name))


def aggregate_queue() -> str:
    return _prefixed("nerfleet.aggregate")


def train_queue() -> str:
    return _prefixed("nerfleet.train")
