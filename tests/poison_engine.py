"""An engine for the poison-job test: a document containing POISON kills the worker process, every time."""

import os

from nerfleet.workers.batched import BatchedEngine


class PoisonEngine(BatchedEngine):
    name = "poison"

    def generate(self, requests):
        if any("POISON" in r.text for r in requests):
            os._exit(137)  # as an OOM kill would
        return super().generate(requests)


class RaisingEngine(BatchedEngine):
    """A document containing POISON makes the engine raise (a CUDA error, a bad input), every time."""

    name = "raising"

    def generate(self, requests):
        if any("POISON" in r.text for r in requests):
            raise RuntimeError("the engine broke on this batch")
        return super().generate(requests)
