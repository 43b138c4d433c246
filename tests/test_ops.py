"""Operating the fleet with real processes: kill -9, broker restart, poison jobs, Flower, pickles, two hosts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from nerfleet.cli import app as cli
from nerfleet.settings import get_settings
from nerfleet.storage.db import session_scope
from nerfleet.storage.tables import Generation, Run
from tests.conftest import DEMO_CORPUS
from tests.helpers import RedisServer, TcpProxy, free_port, wait_for
from tests.test_fleet import _jobs, fleet  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def _running(run_id):
    return [j for j in _jobs(run_id) if j.state == "running"]


def test_kill_9_mid_generation_rerun_within_60s_exactly_once(fleet, tiny_models):  # noqa: F811
    a = tiny_models["tiny-a"]
    victim = fleet.worker(a, "victim", engine="simple").wait_ready()
    plan = fleet.run([a], max_new_tokens=300)  # long generations: the kill lands mid-batch
    in_hand = wait_for(lambda: _running(plan.run_id), 120, 0.02, "a running job")
    victim.kill()
    killed = {j.hash for j in in_hand}
    replacement = fleet.worker(a, "replacement").wait_ready()
    from nerfleet.storage.tables import utcnow

    ready_at = utcnow()
    fleet.wait_aggregated(plan.run_id, timeout=240)
    jobs = _jobs(plan.run_id)
    assert all(j.state == "done" for j in jobs)
    with session_scope() as s:
        gens = s.exec(select(Generation)).all()
        assert len(gens) == len(jobs) == 15  # none missing, none twice
        assert s.get(Run, plan.run_id).aggregation_count == 1
        redone = [g for g in gens if g.job_hash in killed]
    assert redone and all(next(j for j in jobs if j.hash == g.job_hash).attempts == 2 for g in redone)
    # They ran again within 60 s of the replacement starting (their lease expired, the sweeper re-sent them).
    assert max((g.created_at - ready_at).total_seconds() for g in redone) < 60
    # The killed jobs were handed out again by the lease sweeper, not the 6 h visibility timeout:
    assert get_settings().visibility_timeout_s >= 3600
    # No document text in logs at INFO.
    assert "sub-Saharan origin" not in replacement.log.read_text()


def test_redis_restart_during_a_run(fleet, tiny_models, redis_server, monkeypatch):  # noqa: F811
    a = tiny_models["tiny-a"]
    monkeypatch.setenv("NERFLEET_BATCH_SIZE", "1")
    get_settings.cache_clear()
    fleet.worker(a, "survivor", engine="simple").wait_ready()
    plan = fleet.run([a], max_new_tokens=300)
    wait_for(lambda: sum(j.state == "done" for j in _jobs(plan.run_id)) >= 2, 120, 0.05, "some jobs done")
    redis_server.stop()
    time.sleep(2)
    redis_server.start()  # same port, same append-only file
    fleet.wait_aggregated(plan.run_id, timeout=240)
    assert all(j.state == "done" for j in _jobs(plan.run_id))


def _poisoned_corpus(tmp_path, name: str) -> str:
    """The demo corpus with POISON in note en-demo-002, built and stored under ``name``."""
    release = tmp_path / name
    shutil.copytree(DEMO_CORPUS, release)
    for corpus in ("distemist", "symptemist", "medprocner"):
        txt = release / corpus / "txt" / "en-demo-002.txt"
        txt.write_text(txt.read_text() + "POISON\n")
    assert CliRunner().invoke(cli, ["corpus", "build", str(release), "--name", name]).exit_code == 0
    return name


def test_poison_job_fails_after_max_attempts_and_the_rest_completes(fleet, tiny_models, tmp_path, monkeypatch):  # noqa: F811
    fleet.corpus = _poisoned_corpus(tmp_path, "poisoned")
    for key, value in {"NERFLEET_MAX_ATTEMPTS": "2", "NERFLEET_LEASE_S": "3"}.items():
        monkeypatch.setenv(key, value)
        fleet.env[key] = value
    get_settings.cache_clear()
    plan = fleet.run([tiny_models["tiny-a"]], prompts=["v1"], limit=4)
    deaths = 0
    deadline = time.time() + 240
    while time.time() < deadline:  # a supervisor (systemd Restart=always) restarting a dying worker
        w = fleet.worker(tiny_models["tiny-a"], f"supervised-{deaths}", engine="tests.poison_engine:PoisonEngine")
        while w.proc.poll() is None:
            with session_scope() as s:
                if s.get(Run, plan.run_id).aggregated_at is not None:
                    break
            time.sleep(0.3)
        if w.proc.poll() is None:
            break
        deaths += 1
    jobs = _jobs(plan.run_id)
    poisoned = [j for j in jobs if j.doc_id == "en-demo-002"]
    assert len(poisoned) == 1 and poisoned[0].state == "failed" and "2 attempts" in poisoned[0].error
    assert all(j.state == "done" for j in jobs if j.doc_id != "en-demo-002")
    assert 1 <= deaths <= 2
    report = CliRunner().invoke(cli, ["report", plan.run_id])
    assert "Failed jobs" in report.stdout and "en-demo-002" in report.stdout


def test_pickled_message_is_refused(fleet, tiny_models):  # noqa: F811
    w = fleet.worker(tiny_models["tiny-a"], "strict").wait_ready()
    from nerfleet.tasks.app import make_app

    app = make_app()
    app.conf.accept_content = ["json", "pickle"]  # this producer could; the worker must not accept it
    app.send_task("nerfleet.generate", args=["x", "tiny-a", ["nope"]], queue="gen.tiny-a", serializer="pickle")
    wait_for(lambda: "pickle" in w.log.read_text() and "Refusing" in w.log.read_text(), 30, what="refusal in log")
    assert "Task nerfleet.generate" not in w.log.read_text()


def test_an_engine_error_spends_the_job_attempts_only(fleet, tiny_models, tmp_path, monkeypatch):  # noqa: F811
    """One retry budget: the database's attempts. A job whose batch raises every time is tried
    NERFLEET_MAX_ATTEMPTS times, alone after the first failure, then failed; its batch-mates are
    sent again and done; status says how many were tried more than once."""
    fleet.corpus = _poisoned_corpus(tmp_path, "raising")
    monkeypatch.setenv("NERFLEET_MAX_ATTEMPTS", "3")
    fleet.env["NERFLEET_MAX_ATTEMPTS"] = "3"
    get_settings.cache_clear()
    fleet.worker(tiny_models["tiny-a"], "raising", engine="tests.poison_engine:RaisingEngine").wait_ready()
    plan = fleet.run([tiny_models["tiny-a"]], prompts=["v1"], limit=4)
    fleet.wait_aggregated(plan.run_id)
    jobs = _jobs(plan.run_id)
    (bad,) = [j for j in jobs if j.doc_id == "en-demo-002"]
    assert bad.state == "failed" and bad.attempts == 3 and "engine broke" in bad.error
    assert all(j.state == "done" for j in jobs if j is not bad)
    status = json.loads(CliRunner().invoke(cli, ["status", plan.run_id, "--json"]).stdout)
    assert status["failed"] == 1 and status["most_attempts"] == 3 and status["max_attempts"] == 3
    assert status["retried"] >= 1


def test_flower_lists_the_live_worker_and_requires_auth(fleet, tiny_models, broker):  # noqa: F811
    fleet.worker(tiny_models["tiny-a"], "watched").wait_ready()
    port = free_port()
    env = {**fleet.env, "FLOWER_BASIC_AUTH": "admin:s3cret"}
    flower = subprocess.Popen(
        [sys.executable, "-m", "nerfleet.cli", "monitor", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/workers?refresh=1"

        def get(auth: bool):
            req = urllib.request.Request(url)
            if auth:
                req.add_header("Authorization", "Basic " + b64encode(b"admin:s3cret").decode())
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, ""
            except OSError:
                return None, ""

        wait_for(lambda: get(False)[0] is not None, 60, what="Flower listening")
        assert get(False)[0] == 401
        status, body = wait_for(
            lambda: (r := get(True))[0] == 200 and "watched@" in r[1] and r, 60, what="worker listed by Flower"
        )
        assert any(name.startswith("watched@") for name in json.loads(body))
        # no secret on any command line: ps shows argv to every local user
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert b"s3cret" not in cmdline.read_bytes(), cmdline
            except OSError:
                continue
        flower.send_signal(signal.SIGTERM)  # the monitor alone: its Flower goes with it
        flower.wait(timeout=20)
        wait_for(lambda: get(False)[0] is None, 20, what="Flower stopped with the monitor")
    finally:
        if flower.poll() is None:
            os.killpg(flower.pid, signal.SIGKILL)


def test_monitor_refuses_open_flower_beyond_loopback(monkeypatch):
    from nerfleet.monitor import flower_command

    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    with pytest.raises(RuntimeError, match="without authentication"):
        flower_command("0.0.0.0", 5555)
    cmd, env = flower_command("127.0.0.1", 5555)
    assert env["FLOWER_UNAUTHENTICATED_API"] == "true"
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "u:p")
    cmd, env = flower_command("0.0.0.0", 5555)
    assert env["FLOWER_BASIC_AUTH"] == "u:p" and not any("u:p" in part for part in cmd)


def _netns_available() -> str | None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return "needs root and iproute2"
    probe = subprocess.run(["ip", "netns", "add", "nf-probe"], capture_output=True, text=True)
    if probe.returncode:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "nf-probe"])
    return None


@pytest.fixture
def two_hosts():
    reason = _netns_available()
    if reason:
        pytest.skip(reason)
    hosts = []
    for i in (1, 2):
        ns, host_if, ns_if = f"nf-host{i}", f"nfv{i}", f"nfv{i}ns"
        gw, addr = f"10.203.{i}.1", f"10.203.{i}.2"
        for cmd in (
            f"ip netns add {ns}",
            f"ip link add {host_if} type veth peer name {ns_if}",
            f"ip link set {ns_if} netns {ns}",
            f"ip addr add {gw}/30 dev {host_if}",
            f"ip link set {host_if} up",
            f"ip netns exec {ns} ip addr add {addr}/30 dev {ns_if}",
            f"ip netns exec {ns} ip link set {ns_if} up",
            f"ip netns exec {ns} ip link set lo up",
        ):
            subprocess.run(cmd.split(), check=True)
        hosts.append((ns, gw))
    yield hosts
    for i, (ns, _) in enumerate(hosts, start=1):
        subprocess.run(["ip", "link", "del", f"nfv{i}"], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_two_hosts_over_a_virtual_network_share_one_run(two_hosts, pg_url, tiny_models, tmp_path, monkeypatch):
    """Each worker "host" lives in its own network namespace and reaches Redis and PostgreSQL over veth."""
    from sqlalchemy.engine import make_url

    monkeypatch.setenv("NERFLEET_DATABASE_URL", pg_url)
    monkeypatch.setenv("NERFLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NERFLEET_BATCH_SIZE", "1")
    redis = RedisServer(tmp_path / "redis", bind="0.0.0.0").start()
    pg = make_url(pg_url)
    proxies = []
    try:
        monkeypatch.setenv("NERFLEET_BROKER_URL", f"redis://127.0.0.1:{redis.port}/0")
        get_settings.cache_clear()
        assert CliRunner().invoke(cli, ["corpus", "build", "demo"]).exit_code == 0
        workers = []
        for i, (ns, gw) in enumerate(two_hosts, start=1):
            pg_port = free_port()
            proxies.append(TcpProxy((gw, pg_port), (pg.host or "127.0.0.1", pg.port or 5432)))
            env = {
                **os.environ,
                "NERFLEET_BROKER_URL": f"redis://{gw}:{redis.port}/0",
                "NERFLEET_DATABASE_URL": pg.set(host=gw, port=pg_port).render_as_string(hide_password=False),
                "NERFLEET_HOME": str(tmp_path / f"host{i}"),
                "HF_HUB_OFFLINE": "1",
            }
            log = tmp_path / f"host{i}.log"
            args = [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "nerfleet.cli",
                "worker",
                "--model",
                str(tiny_models["tiny-a"]),
                "--name",
                f"host{i}@%h",
                "--engine",
                "simple",
            ]
            workers.append(
                (
                    subprocess.Popen(
                        args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
                    ),
                    log,
                )
            )
        for _proc, log in workers:
            wait_for(lambda log=log: " ready." in log.read_text(), 120, what=f"worker {log.name}")
        from nerfleet.tasks.app import make_app
        from nerfleet.tasks.producer import create_run

        plan = create_run([str(tiny_models["tiny-a"])], ["v1", "v2", "v3"], "all", 5, 200, None, None, app=make_app())

        def aggregated():
            with session_scope() as s:
                return s.get(Run, plan.run_id).aggregated_at is not None

        wait_for(aggregated, 240, what="the run")
        jobs = _jobs(plan.run_id)
        assert all(j.state == "done" for j in jobs)
        by_host = {w.split("@")[0] for w in (j.worker for j in jobs)}
        assert by_host == {"host1", "host2"}, f"both hosts take part: {by_host}"
    finally:
        for proc, _ in workers if "workers" in dir() else []:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        for p in proxies:
            p.stop()
        redis.stop()


def test_compose_file_validates():
    exe = shutil.which("docker-compose")
    if not exe:
        pytest.skip("docker-compose (Debian package) not installed")

    def config(env: dict) -> subprocess.CompletedProcess:
        return subprocess.run(
            [exe, "-f", "deploy/compose.yaml", "config"],
            capture_output=True,
            text=True,
            env=env,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        )

    out = config({**os.environ, "POSTGRES_PASSWORD": "x", "FLOWER_BASIC_AUTH": "a:b"})
    assert out.returncode == 0, out.stderr
    assert "worker-gpu0" in out.stdout and "appendonly" in out.stdout
    # Secrets are required from the environment, never defaulted in the file.
    missing = config({k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")})
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr
