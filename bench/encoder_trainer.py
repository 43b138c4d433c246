"""The encoder baseline two ways on the same data, seed and parameters: nerfleet's own loop
(``workers/finetune.py``) and transformers' ``Trainer`` (``workers/encoder_trainer.py``). Prints
test micro F1, dev F1 by epoch and seconds of each, and writes them as JSON.

    python bench/encoder_trainer.py --corpus ../shared/data/clinical-cases-es --epochs 2 --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from nerfleet.evaluation.corpus import build_corpus
from nerfleet.workers import encoder_trainer, finetune
from nerfleet.workers.finetune import TrainParams, encoder_source


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--epochs", type=int, default=TrainParams.epochs)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch
    import transformers

    docs = build_corpus(args.corpus).documents
    train_docs = [d for d in docs if d.split == "train"]
    test_docs = [d for d in docs if d.split == "test"]
    params = TrainParams(epochs=args.epochs)
    rows = []
    for name, train in (("loop", finetune.train), ("trainer", encoder_trainer.train)):
        torch.manual_seed(params.seed)
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = train("bench", encoder_source(args.encoder), train_docs, test_docs, params, Path(out))
            seconds = time.perf_counter() - start
        micro = result["metrics"]["micro"]
        rows.append(
            {
                "path": name,
                "seconds": seconds,
                "test_micro": {k: micro[k] for k in ("precision", "recall", "f1")},
                "dev_f1_by_epoch": [h["dev_f1"] for h in result["history"]],
            }
        )
        print(
            f"{name:<8} {seconds:8.0f} s  test micro F1 {micro['f1']:.3f}  dev F1 {rows[-1]['dev_f1_by_epoch']}",
            flush=True,
        )
    if args.out:
        meta = {
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "encoder": args.encoder,
            "params": params.__dict__,
            "train_documents": len(train_docs),
            "test_documents": len(test_docs),
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
