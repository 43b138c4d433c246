"""An engine whose answers are the adversarial outputs (tests/adversarial.py), one per job, in turn."""

from nerfleet.workers.batched import BatchedEngine
from nerfleet.workers.engine import GenerationResult
from tests.adversarial import adversarial_outputs


class AdversarialEngine(BatchedEngine):
    name = "adversarial"

    def generate(self, requests):
        results = []
        for req in requests:
            cases = list(adversarial_outputs(req.text).values())
            output = cases[int(req.key[:8], 16) % len(cases)]
            results.append(GenerationResult(req.key, output, 1, len(output.split()), False, 0.0))
        return results
