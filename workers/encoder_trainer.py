"""Training the encoder baseline on transformers' ``Trainer``: the tokenizer's
``is_split_into_words`` / ``stride`` windows, ``DataCollatorForTokenClassification``, ``Trainer``'s
optimiser, linear schedule, epoch checkpoints and resumption. It replaced a hand-written loop after
measuring both on the real corpus (2 epochs, this project's 2-core CPU: loop 464 s, test micro F1
0.391; Trainer 444 s, 0.417; bench/NOTES.md, session 14).

Dev F1 is the document-level score of :func:`~nerfleet.workers.finetune.evaluate` (windows merged,
strict IOB2), computed in a callback at each epoch's end; early stopping on it keeps the best
epoch's weights, as the loop does.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from nerfleet.evaluation.spans import spans_to_iob, tokenize_for_spans
from nerfleet.workers import finetune
from nerfleet.workers.finetune import TAG_ID, TAGS, TrainParams


def windows_of(tokenizer, docs, p: TrainParams) -> list[dict]:
    """Each document's words through the tokenizer (``is_split_into_words``), cut into windows of
    ``max_length`` with ``train_stride`` sub-words of overlap; a word's label on its first sub-word
    of each window it starts in, -100 elsewhere."""
    examples = []
    for doc in docs:
        tokens = tokenize_for_spans(doc.text, doc.spans)
        tags = spans_to_iob(tokens, doc.spans)
        enc = tokenizer(
            [t.text for t in tokens],
            is_split_into_words=True,
            truncation=True,
            max_length=p.max_length,
            stride=p.train_stride,
            return_overflowing_tokens=True,
        )
        for k in range(len(enc["input_ids"])):
            labels, previous = [], None
            for w in enc.word_ids(k):
                labels.append(-100 if w is None or w == previous else TAG_ID[tags[w]])
                previous = w
            examples.append(
                {"input_ids": enc["input_ids"][k], "attention_mask": enc["attention_mask"][k], "labels": labels}
            )
    return examples


def train(job_id: str, source: str, train_docs, test_docs, p: TrainParams, out_dir: Path, progress=None) -> dict:
    """Train on ``train_docs`` less a seeded dev share, checkpointing each epoch (an interrupted job
    resumes after its last checkpoint), early stopping on dev F1 when ``p.patience``; test metrics."""
    docs = sorted(train_docs, key=lambda d: d.doc_id)
    dev_ids = set(random.Random(p.seed).sample([d.doc_id for d in docs], max(1, int(len(docs) * p.dev_fraction))))
    fit = [d for d in docs if d.doc_id not in dev_ids]
    dev = [d for d in docs if d.doc_id in dev_ids]
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = AutoConfig.from_pretrained(source, num_labels=len(TAGS), id2label=dict(enumerate(TAGS)), label2id=TAG_ID)
    for name in ("attention_probs_dropout_prob", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, p.attention_dropout)
    model = AutoModelForTokenClassification.from_pretrained(source, config=config, ignore_mismatched_sizes=True)
    last = get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None
    out_dir.mkdir(parents=True, exist_ok=True)
    record = out_dir / "history.json"  # the dev F1 of each epoch (and the best), kept across a resumption
    kept: dict = {"history": [], "best": None}
    if last is not None and record.is_file():  # epochs recorded after the last checkpoint will run again
        kept = json.loads(record.read_text())
        done = round(json.loads((Path(last) / "trainer_state.json").read_text())["epoch"])
        kept["history"] = [h for h in kept["history"] if h["epoch"] <= done]

    class DevF1(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            epoch = round(state.epoch)
            dev_f1 = finetune.evaluate(model, tokenizer, dev, p)["micro"]["f1"]
            model.train()
            kept["history"].append({"epoch": epoch, "dev_f1": dev_f1, "seconds": time.perf_counter() - self.started})
            if p.patience and (kept["best"] is None or dev_f1 > kept["best"]["dev_f1"]):
                kept["best"] = {"epoch": epoch, "dev_f1": dev_f1}
                torch.save(model.state_dict(), out_dir / "best.pt")
            record.write_text(json.dumps(kept))
            if kept["best"] is not None and epoch - kept["best"]["epoch"] >= p.patience:
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if progress:  # after the epoch's checkpoint is on disk: an interruption here resumes after it
                progress(round(state.epoch), kept["history"])

    # transformers 5 takes the warm-up ratio as a float warmup_steps; 4.x as warmup_ratio
    fields = TrainingArguments.__dataclass_fields__
    warmup = {"warmup_ratio": p.warmup} if "warmup_ratio" in fields else {"warmup_steps": p.warmup}
    args = TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=p.epochs,
        per_device_train_batch_size=p.batch_size,
        learning_rate=p.lr,
        weight_decay=0.01,
        **warmup,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=p.seed,
        save_strategy="epoch",
        save_total_limit=1,
        eval_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=windows_of(tokenizer, fit, p),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        callbacks=[DevF1()],
    )
    trainer.remove_callback(PrinterCallback)  # its log lines would mix with the command's output
    trainer.train(resume_from_checkpoint=last)
    losses = {round(e["epoch"]): e["loss"] for e in trainer.state.log_history if "loss" in e}
    for h in kept["history"]:
        h["loss"] = losses.get(h["epoch"], h.get("loss"))
    if kept["best"] is not None:
        model.load_state_dict(torch.load(out_dir / "best.pt", weights_only=True))
        kept["history"][kept["best"]["epoch"] - 1]["kept"] = True
    final = out_dir / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    (final / "nerfleet.json").write_text(
        json.dumps({"params": asdict(p), "source": source, "history": kept["history"]})
    )
    metrics = finetune.evaluate(model, tokenizer, test_docs, p)
    return {"metrics": metrics, "history": kept["history"], "final": str(final)}
