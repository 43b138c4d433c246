"""xgrammar and llguidance on the same grammars and tokenizer: compile time and mask time per token.

Both engines get the guided conditions' structures (the v2 grammar, the v3 JSON schema of
``evaluation/grammars.py``) and replay the same token sequences: the gold mentions of real notes
written in each structure. Per token: fill the next-token mask, then accept the token. Prints a
table, writes JSON.

    python bench/grammar_engines.py --model smollm2 --corpus ../shared/data/clinical-cases-es --docs 20 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

from nerfleet.evaluation.calibration import mentions
from nerfleet.evaluation.corpus import build_corpus
from nerfleet.evaluation.grammars import MAX_ENTITY_CHARS, V2_GRAMMAR, V3_SCHEMA
from nerfleet.workers.models import load, resolve

_V2_CAT = {"DISEASE": "diseases", "SYMPTOM": "symptoms", "PROCEDURE": "medical procedures"}
_V3_CAT = {"DISEASE": "disease", "SYMPTOM": "symptom", "PROCEDURE": "medical procedure"}


def answers(doc) -> dict[str, str]:
    """The note's gold mentions in the exact v2 and v3 guided structures."""
    found = [(re.sub(r'[,;\[\]{}"\n\r\\]', " ", t).strip()[:MAX_ENTITY_CHARS], lab) for t, lab in mentions(doc)]
    found = [(t, lab) for t, lab in found if t]
    v2 = ", ".join(f"{k}: [" + ", ".join(t for t, lab in found if lab == label) + "]" for label, k in _V2_CAT.items())
    v3 = json.dumps({"annotations": [{"entity": t, "category": _V3_CAT[lab]} for t, lab in found]}, ensure_ascii=False)
    return {"dict": "{" + v2 + "}", "json": v3}


def replay(rows: list[list[int]], new_matcher, fill, accept: str) -> dict:
    """Each token sequence through a fresh matcher: fill the next mask, then accept the token."""
    n = rejected = 0
    t = time.perf_counter()
    for ids in rows:
        m = new_matcher()
        for i in ids:
            fill(m)
            n += 1
            if not getattr(m, accept)(i):
                rejected += 1
                break
    return {"us_per_token": 1e6 * (time.perf_counter() - t) / n, "tokens": n, "rejected_sequences": rejected}


def run_xgrammar(tok, vocab: int, seqs: dict[str, list[list[int]]]) -> dict:
    import xgrammar as xgr

    t = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info)
    out = {"tokenizer_s": time.perf_counter() - t}
    for fmt, rows in seqs.items():
        t = time.perf_counter()
        g = (
            compiler.compile_grammar(V2_GRAMMAR)
            if fmt == "dict"
            else compiler.compile_json_schema(json.dumps(V3_SCHEMA), any_whitespace=False)
        )
        compile_s = time.perf_counter() - t
        mask = xgr.allocate_token_bitmask(1, vocab)
        out[fmt] = {
            "compile_s": compile_s,
            **replay(
                rows,
                lambda g=g: xgr.GrammarMatcher(g),
                lambda m, mask=mask: m.fill_next_token_bitmask(mask, 0),
                "accept_token",
            ),
        }
    return out


def run_llguidance(tok, vocab: int, seqs: dict[str, list[list[int]]]) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.torch
    from llguidance.gbnf_to_lark import gbnf_to_lark

    t = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    out = {"tokenizer_s": time.perf_counter() - t}
    grammars = {
        "dict": llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(V2_GRAMMAR)),
        "json": llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(V3_SCHEMA),
            defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
        ),
    }
    for fmt, rows in seqs.items():
        t = time.perf_counter()
        first = llguidance.LLMatcher(lltok, grammars[fmt])
        compile_s = time.perf_counter() - t
        if first.is_error():
            out[fmt] = {"error": first.get_error()}
            continue
        mask = llguidance.torch.allocate_token_bitmask(1, vocab)
        out[fmt] = {
            "compile_s": compile_s,
            **replay(
                rows,
                lambda g=grammars[fmt]: llguidance.LLMatcher(lltok, g),
                lambda m, mask=mask: llguidance.torch.fill_next_token_bitmask(m, mask, 0),
                "consume_token",
            ),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    spec = resolve(args.model)
    model, tok = load(spec, device="cpu")
    vocab = model.config.get_text_config().vocab_size
    docs = sorted(build_corpus(args.corpus).documents, key=lambda d: d.doc_id)[: args.docs]
    seqs: dict[str, list[list[int]]] = {"dict": [], "json": []}
    for d in docs:
        for fmt, text in answers(d).items():
            seqs[fmt].append(tok(text, add_special_tokens=False)["input_ids"])
    result = {"xgrammar": run_xgrammar(tok, vocab, seqs), "llguidance": run_llguidance(tok, vocab, seqs)}
    print(f"{'engine':<12}{'format':<8}{'compile s':>11}{'µs/token':>10}{'tokens':>9}{'rejected':>10}")
    for engine, r in result.items():
        print(f"{engine:<12}{'(tokenizer)':<8}{r['tokenizer_s']:>11.3f}")
        for fmt in ("dict", "json"):
            c = r[fmt]
            if "error" in c:
                print(f"{engine:<12}{fmt:<8}  error: {c['error'][:80]}")
                continue
            print(
                f"{engine:<12}{fmt:<8}{c['compile_s']:>11.3f}{c['us_per_token']:>10.1f}{c['tokens']:>9}"
                f"{c['rejected_sequences']:>10}"
            )
    if args.json:
        import llguidance
        import transformers

        meta = {
            "machine": platform.processor() or platform.machine(),
            "model": args.model,
            "vocab": vocab,
            "docs": len(docs),
            "transformers": transformers.__version__,
            "llguidance": llguidance.get_version(),
        }
        args.json.write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
