"""The continuous engine alone on a GPU: speed, and the same answers alone and among others.

A random-weight model of a study architecture (``--arch``) or a real one (``--model``), real notes
(``--corpus``) with the three prompts. Prints a JSON row: generated tokens/s of the continuous
engine and, with ``--batched``, of the static batched engine on the same requests and the same
memory (its batch = the slots); with ``--same N``, how many of N documents get the same tokens
decoded alone (every other slot idle) as among the others.

    python bench/continuous.py --arch smollm2-135m --corpus PATH --docs 200 --new 256 --batched
    python bench/continuous.py --model SmolLM2.gguf --corpus PATH --docs 100 --vary 16 512 --same 50
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from archs import ARCHS  # noqa: E402

from nerfleet.evaluation.prompts import load_prompt  # noqa: E402
from nerfleet.workers.batched import BatchedEngine
from nerfleet.workers.continuous import ContinuousEngine, SlotConfig  # noqa: E402
from nerfleet.workers.engine import GenerationRequest, engine_counters  # noqa: E402
from nerfleet.workers.slots import Call, SlotRequest  # noqa: E402


def random_model(arch: str):
    from transformers import AutoModelForCausalLM

    cls, kwargs, _ = ARCHS[arch]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cls(**kwargs), dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None  # random weights: every request runs to its budget
    return model


def notes(corpus: Path, docs: int) -> list[str]:
    return [p.read_text() for p in sorted(corpus.glob("*/txt/*.txt"))[:docs]]


def notes_tokenizer(texts: list[str], vocab_size: int = 32000):
    """A byte-level BPE tokenizer trained on the notes, for a random-weight model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>", pad_token="</s>")


def requests_of(texts: list[str], new: int, vary: tuple[int, int] | None) -> list[GenerationRequest]:
    rng = random.Random(0)
    out = []
    for i, text in enumerate(texts):
        for prompt in ("v1", "v2", "v3"):
            budget = rng.randint(*vary) if vary else new
            out.append(GenerationRequest(f"{i}-{prompt}", load_prompt(prompt).template, text, budget))
    return out


def timed(engine, reqs) -> tuple[float, list]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    results = engine.generate(reqs)
    torch.cuda.synchronize()
    return time.perf_counter() - start, results


def step_ms(engine) -> float:
    """Milliseconds of one replay of the captured decoding step (median of 50), then a profiler
    table of 5 replays printed."""
    times = []
    for _ in range(50):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        engine._replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            engine._replay()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
    return sorted(times)[25]


def prefill_once(engine, reqs: list[GenerationRequest], ids: list[list[int]]) -> None:
    """One prefill of these prompts' token ids into the first slots, as the engine's loop makes it
    (from this thread: the loop must be idle), each with a budget of one token, so that every slot
    is freed at once."""
    call = Call([None] * len(reqs), len(reqs))
    items = [SlotRequest(r, row, False, call, i, 1, 0.0) for i, (r, row) in enumerate(zip(reqs, ids))]
    engine._prefill(items, list(range(len(items))))


def prefill_ms(engine, reqs: list[GenerationRequest], rows: int) -> dict:
    """One prefill of ``rows`` prompts as the loop makes them (this thread, the loop idle): its
    wall milliseconds (median of 5), the GPU's kernel milliseconds in it, and the profiler's
    tables: whether a prefill waits on its kernels or on the host."""
    from torch.profiler import ProfilerActivity, profile

    def prefill() -> None:
        prefill_once(engine, reqs[:rows], [ids for ids, _ in engine.encode_all(reqs[:rows])])
        torch.cuda.synchronize()

    times = []
    with torch.inference_mode():
        for _ in range(5):
            t = time.perf_counter()
            prefill()
            times.append(1000 * (time.perf_counter() - t))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            prefill()
    events = prof.key_averages()
    print(events.table(sort_by="cuda_time_total", row_limit=25), flush=True)
    print(events.table(sort_by="cpu_time_total", row_limit=25), flush=True)
    kernels = sum(e.self_device_time_total for e in events) / 1000
    return {"rows": rows, "wall_ms": sorted(times)[2], "kernel_ms": kernels, "walls_ms": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=sorted(ARCHS))
    ap.add_argument("--model", help="a real model (folder, .gguf, registry name)")
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--vary", type=int, nargs=2, help="each request's budget drawn from this range")
    ap.add_argument("--slots", type=int)
    ap.add_argument("--slot-len", type=int, default=2048)
    ap.add_argument("--check-every", type=int, default=8)
    ap.add_argument("--prefill-rows", type=int, default=128)
    ap.add_argument("--batched", action="store_true", help="the static batched engine too, batch = slots")
    ap.add_argument("--same", type=int, default=0, help="documents checked alone against among others")
    ap.add_argument("--profile", action="store_true", help="time the captured step alone, and profile it")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.model:
        from nerfleet.workers.models import load, resolve

        model, tok = load(resolve(args.model), device="cuda")
    else:
        model = random_model(args.arch)
        tok = notes_tokenizer(notes(args.corpus, 10**6))
    reqs = requests_of(notes(args.corpus, args.docs), args.new, tuple(args.vary) if args.vary else None)
    config = SlotConfig(
        slots=args.slots, slot_len=args.slot_len, check_every=args.check_every, prefill_rows=args.prefill_rows
    )
    t = time.perf_counter()
    engine = ContinuousEngine(model, tok, config=config)
    engine.start()
    row = {
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "model": args.model or f"random {args.arch}",
        "requests": len(reqs),
        "budgets": args.vary or args.new,
        "slots": engine.slots,
        "slot_len": engine.slot_len,
        "prepare_s": time.perf_counter() - t,
    }
    print(json.dumps(row), flush=True)
    seconds, results = timed(engine, reqs)
    tokens = sum(r.output_tokens for r in results)
    row.update(
        continuous_s=seconds,
        generated_tokens=tokens,
        continuous_tokens_per_s=tokens / seconds,
        stats=engine_counters(engine),
        peak_gib=torch.cuda.max_memory_allocated() / 2**30,
    )
    print(json.dumps(row), flush=True)
    if args.profile:
        row["step_ms"] = step_ms(engine)
        row["prefill"] = [prefill_ms(engine, reqs, n) for n in (8, 96)]
        print(json.dumps(row), flush=True)
    if args.same:
        subset = [r for r in reqs if r.key.endswith("-v2")][: args.same]
        among = {r.key: r.output for r in results}
        alone = {r.key: engine.generate([r])[0].output for r in subset}
        row["same_alone_as_among_others"] = f"{sum(among[k] == v for k, v in alone.items())}/{len(alone)}"
        print(json.dumps(row), flush=True)
    if args.batched:
        engine.close()
        torch.cuda.empty_cache()
        batched = BatchedEngine(model, tok, batch_size=row["slots"], invariant=False)
        seconds, results = timed(batched, reqs)
        tokens = sum(r.output_tokens for r in results)
        row.update(batched_s=seconds, batched_tokens_per_s=tokens / seconds)
        row["continuous_over_batched"] = row["continuous_tokens_per_s"] / row["batched_tokens_per_s"]
    print(json.dumps(row, indent=1))
    if args.out:
        args.out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
