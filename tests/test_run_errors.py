"""`nerfleet run` and friends: clear one-line errors, nothing half-written."""

import json

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from nerfleet.cli import app
from nerfleet.storage.db import session_scope
from nerfleet.storage.tables import Document, Job, Run

runner = CliRunner()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--model", "smollm2", "--prompt", "v9"], "unknown prompt 'v9'"),
        (["--model", "smollm2", "--split", "nothing"], "has no documents in split 'nothing'"),
    ],
)
def test_bad_run_arguments(home, demo_corpus, broker, args, message):
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 2
    assert message in result.stderr and "\n" not in result.stderr.strip()
    with session_scope() as s:
        assert s.exec(select(Run)).all() == [] and s.exec(select(Job)).all() == []


def test_unreachable_broker_writes_nothing(home, demo_corpus, monkeypatch):
    from nerfleet.settings import get_settings

    monkeypatch.setenv("NERFLEET_BROKER_URL", "redis://:hunter2@127.0.0.1:1/0")
    get_settings.cache_clear()
    result = runner.invoke(app, ["run", "--model", "smollm2", "--limit", "1"])
    assert result.exit_code == 2 and "broker redis://:***@127.0.0.1:1/0 unreachable" in result.stderr
    assert "hunter2" not in result.stderr  # a password is never printed
    with session_scope() as s:
        assert s.exec(select(Run)).all() == []


def test_unreachable_database_is_one_line(monkeypatch, tmp_path):
    from nerfleet.settings import get_settings

    monkeypatch.setenv("NERFLEET_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    result = runner.invoke(app, ["status"])
    get_settings.cache_clear()
    assert result.exit_code == 2
    assert result.stderr.startswith("error: database postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_language_folder_and_prefix(tmp_path, home):
    """A multilingual release: <corpus>/<lang>/txt with language-prefixed ids; --lang picks one."""
    import shutil

    from tests.conftest import DEMO_CORPUS

    for corpus in ("distemist", "symptemist", "medprocner"):
        for lang in ("en", "it"):
            dst = tmp_path / "release" / corpus / lang
            (dst / "txt").mkdir(parents=True)
            tsv = next((DEMO_CORPUS / corpus).glob("*.tsv"))
            lines = tsv.read_text().splitlines()
            (dst / tsv.name).write_text(
                "\n".join([lines[0]] + [ln.replace("en-demo", f"{lang}-demo") for ln in lines[1:]]) + "\n"
            )
            for txt in (DEMO_CORPUS / corpus / "txt").glob("*.txt"):
                shutil.copy(txt, dst / "txt" / txt.name.replace("en-demo", f"{lang}-demo"))
    result = runner.invoke(app, ["corpus", "build", str(tmp_path / "release"), "--lang", "it"])
    assert result.exit_code == 0, result.output
    stats = runner.invoke(app, ["corpus", "export", str(tmp_path / "it.jsonl")])
    assert stats.exit_code == 0
    ids = [line for line in (tmp_path / "it.jsonl").read_text().splitlines()]
    assert len(ids) == 12 and all('"doc_id": "it-demo-' in line for line in ids)


def test_worker_without_a_model_says_so_in_one_line(home):
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --model is required (or --train): the one model this worker loads"
    ]


def test_status_of_an_empty_database_is_not_an_error(home):
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0 and "no runs yet" in result.stdout
    assert runner.invoke(app, ["status", "--json"]).stdout.strip() == "null"
    assert runner.invoke(app, ["status", "nope"]).exit_code == 2  # a named run that is not there still is


def test_a_failed_aggregation_is_shown_and_a_retry_can_succeed(home, broker, demo_corpus, monkeypatch):
    """The aggregation never holds a run hostage: its failure is stored and shown by status, the
    jobs stay as they are, and the next try succeeds and clears it."""
    from nerfleet.storage.tables import Run
    from nerfleet.tasks import aggregation
    from nerfleet.tasks.app import make_app
    from nerfleet.tasks.producer import create_run

    plan = create_run(["smollm2"], ["v1"], "all", 1, 4, None, str(demo_corpus), app=make_app())

    def broken(run_id):
        raise RuntimeError("scoring broke")

    original = aggregation.score_run
    monkeypatch.setattr(aggregation, "score_run", broken)
    with pytest.raises(RuntimeError):
        aggregation.aggregate.run(plan.run_id)
    status = runner.invoke(app, ["status", plan.run_id])
    assert "aggregation failed: RuntimeError: scoring broke" in status.stdout
    monkeypatch.setattr(aggregation, "score_run", original)  # the cause fixed
    assert aggregation.aggregate_run(plan.run_id) is not None
    with session_scope() as s:
        run = s.get(Run, plan.run_id)
        assert run.aggregated_at is not None and run.aggregation_error is None


def test_an_aggregation_claimed_and_lost_is_sent_again_once_per_lease(home, broker, demo_corpus):
    """A run's aggregation was claimed, then its message lost or its worker killed: after
    NERFLEET_AGGREGATION_LEASE_S the sweeper sends it again, once (the next sweep does not)."""
    from datetime import timedelta

    from nerfleet.storage.tables import Run, utcnow
    from nerfleet.tasks.app import make_app
    from nerfleet.tasks.dispatch import waiting_messages
    from nerfleet.tasks.producer import create_run
    from nerfleet.tasks.queues import aggregate_queue
    from nerfleet.tasks.sweeper import sweep

    app = make_app()
    plan = create_run(["smollm2"], ["v1"], "all", 1, 4, None, str(demo_corpus), app=app)
    with session_scope() as s:
        run = s.get(Run, plan.run_id)
        run.aggregation_claimed_at = utcnow() - timedelta(hours=1)  # claimed long ago, never stored
        s.add(run)
    assert waiting_messages(app, aggregate_queue()) == 0
    assert sweep(app)["aggregations"] == 1
    assert waiting_messages(app, aggregate_queue()) == 1
    assert sweep(app)["aggregations"] == 0  # claimed again just now: not re-sent before the next bound
    with session_scope() as s:
        assert s.get(Run, plan.run_id).aggregated_at is None  # the sweeper only sends; a worker aggregates


def _budgets_file(tmp_path, data) -> str:
    path = tmp_path / "budgets.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "data,message",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"DOC": 0}, "document 'DOC': max_new_tokens must be a positive integer, not 0"),
        ({"DOC": "64"}, "document 'DOC': max_new_tokens must be a positive integer, not '64'"),
        ({"no-such-note": 64}, "budgets: 1 document id(s) not in split 'test', first 'no-such-note'"),
    ],
)
def test_bad_budgets_are_one_line_and_write_nothing(home, demo_corpus, broker, tmp_path, data, message):
    with session_scope() as s:
        doc = s.exec(select(Document.doc_id).where(Document.split == "test")).first()
    if isinstance(data, dict) and "DOC" in data:
        data = {doc: data["DOC"]}
        message = message.replace("DOC", doc)
    path = _budgets_file(tmp_path, data)
    result = runner.invoke(app, ["run", "--model", "smollm2", "--budgets", path])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "\n" not in result.stderr.strip()
    if "budgets:" not in message:  # a bad file is named; a good file's unknown note is named
        assert path in result.stderr
    with session_scope() as s:
        assert s.exec(select(Run)).all() == [] and s.exec(select(Job)).all() == []


def test_a_documents_budget_is_its_own_jobs_and_makes_another_run(home, demo_corpus, broker, tmp_path):
    with session_scope() as s:
        docs = s.exec(select(Document.doc_id).where(Document.split == "test").order_by(Document.doc_id)).all()[:2]
    plain = runner.invoke(app, ["run", "--model", "smollm2", "--limit", "2", "--max-new-tokens", "64"])
    path = _budgets_file(tmp_path, {docs[0]: 17})
    own = runner.invoke(app, ["run", "--model", "smollm2", "--limit", "2", "--max-new-tokens", "64", "--budgets", path])
    assert plain.exit_code == 0 and own.exit_code == 0, own.output
    assert plain.stdout.splitlines()[-1] != own.stdout.splitlines()[-1]  # another run
    with session_scope() as s:
        budgets = {(j.doc_id, j.hash): json.loads(j.params_json)["max_new_tokens"] for j in s.exec(select(Job))}
    by_doc: dict[str, set[int]] = {}
    for (doc, _), budget in budgets.items():
        by_doc.setdefault(doc, set()).add(budget)
    assert by_doc[docs[0]] == {64, 17}  # the plain run's jobs and the budgeted ones: other jobs
    assert by_doc[docs[1]] == {64}  # a note without a budget keeps --max-new-tokens: the same jobs
    assert len(budgets) == 3 * 2 + 3  # v1-v3 × 2 notes, plus the 3 budgeted jobs of the first note
