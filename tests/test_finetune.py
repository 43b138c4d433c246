"""Encoder baselines: train on a handful of documents with a tiny model, store metrics, tag, resume."""

import json

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from nerfleet.cli import app
from nerfleet.storage.corpus_store import load_documents
from nerfleet.storage.db import session_scope
from nerfleet.storage.tables import Metric, TrainJob
from nerfleet.workers.encoder_trainer import train
from nerfleet.workers.finetune import TrainParams, windows
from tests.helpers import make_tiny_encoder

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("encoder") / "tiny-bert")


def test_windows_cover_every_word_with_overlap():
    pieces = [[1] * (1 + i % 3) for i in range(100)]
    spans = windows(pieces, max_len=20, stride=6)
    covered = set()
    for i, j in spans:
        assert sum(len(p) for p in pieces[i:j]) <= 18
        covered.update(range(i, j))
    assert covered == set(range(100))
    assert all(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # consecutive windows overlap


def test_training_windows_without_overlap_hold_every_word_once():
    pieces = [[1] * (1 + i % 3) for i in range(100)]
    spans = windows(pieces, max_len=20, stride=0)  # TrainParams.train_stride: each label once an epoch
    assert [w for i, j in spans for w in range(i, j)] == list(range(100))


def test_one_epoch_stores_metrics_and_tags_text(home, demo_corpus, tiny_encoder, tmp_path):
    result = runner.invoke(
        app,
        [
            "finetune",
            "--encoder",
            str(tiny_encoder),
            "--epochs",
            "1",
            "--local",
            "--max-length",
            "64",
            "--batch-size",
            "4",
            "--lr",
            "1e-3",
        ],
    )
    assert result.exit_code == 0, result.output
    with session_scope() as s:
        job = s.exec(select(TrainJob)).one()
        assert job.state == "done" and job.epoch == 1
        history = json.loads(job.history_json)
        assert history[0]["epoch"] == 1 and history[0]["loss"] > 0
        metrics = {m.category: m for m in s.exec(select(Metric).where(Metric.strategy == "encoder"))}
        assert set(metrics) == {"DISEASE", "SYMPTOM", "PROCEDURE", "micro", "macro"}
        assert all(0 <= m.f1 <= 1 for m in metrics.values())
        final = f"{job.checkpoint_dir}/final"
        micro_f1 = metrics["micro"].f1
    status = runner.invoke(app, ["training", "--json"])
    assert status.exit_code == 0, status.output
    (shown,) = json.loads(status.stdout)
    assert shown["state"] == "done" and shown["test"]["micro"]["f1"] == micro_f1
    assert set(shown["test"]) == {"DISEASE", "SYMPTOM", "PROCEDURE", "micro", "macro"}
    note = tmp_path / "note.txt"
    text = "A 50-year-old man with fever and abdominal pain underwent an abdominal CT scan. " * 20
    note.write_text(text)
    tsv = runner.invoke(app, ["tag", "--model", final, str(note), "--format", "tsv"])
    assert tsv.exit_code == 0, tsv.output
    lines = tsv.stdout.strip().splitlines()
    assert lines[0] == "filename\tann_id\tlabel\tstart_span\tend_span\ttext"
    for line in lines[1:]:
        _, _, label, start, end, span = line.split("\t")
        assert label in ("ENFERMEDAD", "SINTOMA", "PROCEDIMIENTO")  # the official gold files' labels
        assert 0 <= int(start) < int(end) <= len(text) and text[int(start) : int(end)] == span


def test_interrupted_training_resumes_from_last_checkpoint(home, demo_corpus, tiny_encoder, tmp_path):
    """Stopped after epoch 1's checkpoint (Trainer's, on disk), a job resumes with epoch 2 only."""
    with session_scope() as s:
        train_docs = load_documents(s, demo_corpus, "train")
        test_docs = load_documents(s, demo_corpus, "test")
    params = TrainParams(epochs=2, max_length=64, batch_size=4, lr=1e-3)
    out = tmp_path / "ck"

    def crash_after_first(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt  # the machine goes down after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train("t", str(tiny_encoder), train_docs, test_docs, params, out, crash_after_first)
    assert [p.name for p in out.glob("checkpoint-*")]  # epoch 1's checkpoint is on disk
    seen = []
    result = train("t", str(tiny_encoder), train_docs, test_docs, params, out, lambda e, h: seen.append(e))
    assert seen == [2]  # epoch 1 was not trained again
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all(h["loss"] > 0 and 0 <= h["dev_f1"] <= 1 for h in result["history"])
    assert set(result["metrics"]) == {"DISEASE", "SYMPTOM", "PROCEDURE", "micro", "macro"}
    assert (out / "final" / "nerfleet.json").is_file()


def test_early_stopping_keeps_the_epoch_of_the_best_dev_f1(home, demo_corpus, tiny_encoder, tmp_path, monkeypatch):
    """Real training; the dev F1 of each epoch scripted (0.2, 0.5, 0.4, 0.3, …) so the rule is what is
    tested: with patience 2 it stops after epoch 4 and the saved model is epoch 2's."""
    import torch

    from nerfleet.workers import finetune

    with session_scope() as s:
        train_docs = load_documents(s, demo_corpus, "train")
        test_docs = load_documents(s, demo_corpus, "test")
    real_evaluate = finetune.evaluate
    scripted = iter([0.2, 0.5, 0.4, 0.3, 0.1, 0.1])
    weights = {}

    def evaluate(model, tokenizer, docs, p):
        if docs is test_docs:
            return real_evaluate(model, tokenizer, docs, p)
        f1 = next(scripted)
        weights[f1] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"micro": {"f1": f1}}

    monkeypatch.setattr(finetune, "evaluate", evaluate)
    params = TrainParams(epochs=6, patience=2, max_length=64, batch_size=4, lr=1e-3)
    result = train("t", str(tiny_encoder), train_docs, test_docs, params, tmp_path / "ck")
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4]
    assert [h.get("kept", False) for h in result["history"]] == [False, True, False, False]
    from transformers import AutoModelForTokenClassification

    saved = AutoModelForTokenClassification.from_pretrained(result["final"]).state_dict()
    assert all(torch.equal(saved[k], weights[0.5][k]) for k in saved)
    assert not all(torch.equal(saved[k], weights[0.3][k]) for k in saved)  # not the last epoch's


def test_trainer_windows_label_each_word_once_on_its_first_sub_word(home, demo_corpus, tiny_encoder):
    from transformers import AutoTokenizer

    from nerfleet.evaluation.spans import spans_to_iob, tokenize_for_spans
    from nerfleet.workers.encoder_trainer import windows_of
    from nerfleet.workers.finetune import TAG_ID

    with session_scope() as s:
        docs = load_documents(s, demo_corpus, "train")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder))
    params = TrainParams(max_length=32)
    examples = windows_of(tokenizer, docs[:1], params)
    assert len(examples) > 1 and all(len(x["input_ids"]) <= 32 for x in examples)  # cut into windows
    tokens = tokenize_for_spans(docs[0].text, docs[0].spans)
    labels = [label for x in examples for label in x["labels"] if label != -100]
    # no overlap by default: each word labelled once, in order (a word cut at a window edge keeps its first)
    assert labels == [TAG_ID[t] for t in spans_to_iob(tokens, docs[0].spans)][: len(labels)]
    assert len(labels) >= len(tokens) - len(examples)
