"""Continuous batching: a fixed set of slots, one decoding step over all of them, refilled as they end.

Each slot holds one request in its own row of a static key/value cache, at the request's own
positions (cache column = token position). One decoding step runs every slot at once; on CUDA it
is compiled and captured as one CUDA graph at start, so a run never compiles. When a request
ends (a stop token, its own ``max_new_tokens``, the slot's length) its result is handed back
while the GPU runs the next window (or a prefill), and a waiting request is prefilled into the
freed row while the others keep their state: no slot waits for the longest answer of a batch, as
in :class:`~nerfleet.workers.batched.BatchedEngine`.

The design follows vLLM's scheduler at its simplest: requests wait in arrival order; between
windows of decoding steps, free slots are filled by prefills of up to ``prefill_tokens`` prompt
tokens, packed end to end without padding (:mod:`nerfleet.workers.packing`: a prefill's cost is its
matrix products); the host reads the tokens of a window of ``check_every`` steps once the next
window is queued, so that the GPU never waits for the host between windows (a slot whose request
ends by its budget is refilled before the next window instead). A free slot reads one key a step,
not what its last request left.

Same answers: the step's shapes never change (all slots, all cache columns), and its attention
reads each row's own live range (:mod:`nerfleet.workers.decoding`), so a request's decoding
steps do not depend on which requests share the GPU with it. A prefill groups requests, so its
matrix products see other rows; ``prefill_rows=1`` makes it exact too, at some speed.

Many callers may call :meth:`ContinuousEngine.generate` at once (the worker's task threads): a
loop thread owns the GPU and serves them all.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nerfleet.workers.attention import use
from nerfleet.workers.decoding import attend
from nerfleet.workers.engine import (
    GenerationRequest,
    GenerationResult,
    kv_bytes_per_token,
    kv_heads_and_dim,
    on_cuda,
)
from nerfleet.workers.fusion import fuse, fusion_refusal
from nerfleet.workers.guided import Masks
from nerfleet.workers.packing import Packing, packed_attention
from nerfleet.workers.prefixes import PrefixStore
from nerfleet.workers.rotary import materialize_rotary
from nerfleet.workers.simple import SimpleEngine
from nerfleet.workers.slots import (
    Call,
    CompiledStep,
    SlotConfig,
    SlotRequest,
    StagedTokens,
    Window,
    no_mask,
    slots_that_fit,
)

__all__ = ["ContinuousEngine", "SlotConfig", "slots_that_fit"]

log = logging.getLogger(__name__)

#: The backends of a prefill attention that does not run on flash's variable-length kernel (float32
#: on a GPU; the CPU), cuDNN's left out: a prefill's shapes are new more often than not, and cuDNN
#: builds its attention graph anew for each new shape (on an H100 39-41 ms a shape, up to 578,
#: against flash's 0.3-0.7 ms: bench/sdpa_shapes.py, bench/NOTES.md session 19), where the flash
#: kernels are compiled in. Math for what neither fused kernel takes (a mask with grouped heads).
PREFILL_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class ContinuousEngine(CompiledStep, SimpleEngine):
    """Continuous batching over a static slot cache (see the module's docstring)."""

    name = "continuous"
    can_be_invariant = False

    def __init__(
        self,
        model,
        tokenizer,
        chat: bool | None = None,
        context: int | None = None,
        batch_size: int = 8,
        config: SlotConfig | None = None,
    ):
        super().__init__(model, tokenizer, chat, context)  # refuses NERFLEET_BATCH_INVARIANT=true
        self.config = config or SlotConfig()
        cfg, cuda = self.config, on_cuda(model)
        if getattr(model.config.get_text_config(), "attn_logit_softcapping", None):
            raise ValueError("the continuous engine has no attention logit soft-capping (Gemma 2): use batched")
        if cuda:
            if fusion_refusal(model) is None:
                self.model = fuse(model, column_major=True)
            materialize_rotary(self.model)
        self.decoder = self.model.model
        self.head = self.model.get_output_embeddings()
        self.slot_len = min(self.context, cfg.slot_len or 4096)
        self.context = self.slot_len  # prompts are cut to fit a slot with their answer
        self.slots = cfg.slots or self._fit_slots()
        #: Tokens that end an answer (not kept in it): the model's stop tokens and the pad token.
        self.stops = self._stop_ids() | {self.tokenizer.pad_token_id}
        self.graph = cuda if cfg.graph is None else cfg.graph
        self._allocate()
        self._use_slot_attention()
        self._inbox: queue.SimpleQueue[SlotRequest] = queue.SimpleQueue()
        self._waiting: collections.deque[SlotRequest] = collections.deque()
        self._held: list[SlotRequest | None] = [None] * self.slots
        #: Requests that have ended, with their latency, until :meth:`_hand_back` answers them.
        self._ended: list[tuple[SlotRequest, float]] = []
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._replay: Callable[[], None] | None = None
        self._closing = False
        self._prefilling = False
        self._masks = None  # guided slots' matchers and masks (workers/guided.py), made when first needed
        #: Called once, with the time, when the engine has generated its first token.
        self.on_first_token: Callable[[float], None] | None = None
        #: What the engine did, for the benchmarks' floors: decoding steps, prompt tokens prefilled
        #: (and with their padding), keys read by the steps' attention, tokens generated.
        self.stats = collections.Counter()

    # -- memory -------------------------------------------------------------------------------

    def _fit_slots(self) -> int:
        cfg = self.config
        if not on_cuda(self.model):
            return min(cfg.max_slots, 8)
        free, total = torch.cuda.mem_get_info(self.model.device)
        text = self.model.config.get_text_config()
        width = torch.finfo(self.model.dtype).bits // 8
        # a prefill's activations: its hidden states, MLP intermediates and the per-row logits
        prefill = cfg.prefill_tokens * (6 * text.hidden_size + 3 * text.intermediate_size) * width
        prefill += cfg.prefill_rows * text.vocab_size * 4
        kv = kv_bytes_per_token(text, self.model.dtype)
        per_slot = self.slot_len * kv
        kept = min(cfg.prefix_len, self.slot_len)
        prefixes = cfg.prefix_entries * kept * kv
        if cfg.prefix_entries:  # a prefill after prefixes: its prompts' keys and values gathered with theirs
            heads, head_dim = kv_heads_and_dim(text)
            positions = cfg.prefill_tokens + cfg.prefill_rows * kept
            prefill += positions * 2 * heads * head_dim * width
        held = torch.cuda.memory_allocated(self.model.device)
        reserve = prefill + prefixes + 2**30
        return slots_that_fit(free, total, held, cfg.memory_fraction, reserve, per_slot, cfg.max_slots)

    def _allocate(self) -> None:
        text = self.model.config.get_text_config()
        heads, head_dim = kv_heads_and_dim(text)
        dev, n, length = self.model.device, self.slots, self.slot_len
        shape = (n, heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=self.model.dtype, device=dev) for _ in range(text.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=self.model.dtype, device=dev) for _ in range(text.num_hidden_layers)]
        self.rows = torch.arange(n, device=dev)
        self.tokens = torch.zeros(n, dtype=torch.long, device=dev)  # each slot's next input token
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)  # … and its position
        self.active = torch.zeros(n, dtype=torch.long, device=dev)  # 1 while a slot holds a request
        self.bounds = torch.zeros(n, 2, dtype=torch.int32, device=dev)  # live keys: [0, position]
        self.window_bounds = torch.zeros(n, 2, dtype=torch.int32, device=dev)  # … within a sliding window
        self.live = torch.ones(n, length, dtype=torch.int8, device=dev)  # the bounds say which are read
        self.logits = torch.zeros(n, text.vocab_size, dtype=self.model.dtype, device=dev)
        self.window = getattr(text, "sliding_window", None)
        self.history = torch.zeros(self.config.check_every, n, dtype=torch.long, device=dev)
        self._staged = StagedTokens(n, dev)  # a guided window's tokens, step by step
        # a window's tokens on their way to the host: two, as one window is read while the next runs
        self._buffers = [StagedTokens(self.config.check_every * n, dev) for _ in range(2)]
        #: The window queued on the GPU whose tokens the host reads once the next one is queued.
        self._pending: Window | None = None
        cfg = self.config
        self.prefixes = (
            PrefixStore(
                cfg.prefix_entries, min(cfg.prefix_len, length), text.num_hidden_layers, (heads, head_dim),
                self.model.dtype, dev,
            )
            if cfg.prefix_entries
            else None
        )  # fmt: skip
        #: The prompts the prefill in progress computes (read by its attention, layer by layer).
        self._packing: Packing | None = None

    # -- attention ----------------------------------------------------------------------------

    def _use_slot_attention(self) -> None:
        """This engine's attention under a name of its own: it writes the slot cache itself (the
        model runs without a transformers cache) and reads the bounds of this engine's slots."""
        name = f"nerfleet_slots_{id(self):x}"
        self._attention_names = (name, name + "_prefill")
        use(self.model, name + "_prefill", self._prefill_attention, no_mask)
        use(self.model, name, self._attention, no_mask)

    def _attention(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        layer = module.layer_idx
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        window = kwargs.get("sliding_window") or None
        keys, values = self.keys[layer], self.values[layer]
        if query.shape[2] == 1:  # a decoding step over every slot, each at its own position
            write = self.positions
            keys[self.rows, :, write] = key[:, :, 0]
            values[self.rows, :, write] = value[:, :, 0]
            bounds = self.window_bounds if window else self.bounds
            if query.device.type == "cuda":
                return attend(query, keys, values, self.live, bounds, scale), None
            cols = torch.arange(keys.shape[2], device=query.device)
            mask = (cols >= bounds[:, :1]) & (cols < bounds[:, 1:])
            out = F.scaled_dot_product_attention(
                query, keys, values, attn_mask=mask[:, None, None, :], scale=scale, enable_gqa=True
            )
            return out.transpose(1, 2).contiguous(), None
        raise RuntimeError("a prefill reached the decoding attention")

    @torch.compiler.disable
    def _prefill_attention(self, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        """The packed prompts of ``self._packing``: their keys and values written into their slots
        at their positions (kept prefixes copied in beside them, layer by layer), each prompt
        attending causally to its own keys. Outside compiled code (a graph break in the prefill's
        compiled layers, under an attention name of its own that the prefill switches to): the
        layer index it reads would make the compiler specialise each layer."""
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        window = kwargs.get("sliding_window") or None
        layer, packing = module.layer_idx, self._packing
        keys, values = self.keys[layer], self.values[layer]
        query, key, value = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, d)
        keys[packing.slot_of, :, packing.positions[0]] = key
        values[packing.slot_of, :, packing.positions[0]] = value
        if packing.copy is not None:
            slot, position, entry = packing.copy
            keys[slot, :, position] = self.prefixes.keys[layer][entry, :, position]
            values[slot, :, position] = self.prefixes.values[layer][entry, :, position]
        return packed_attention(query, keys, values, packing, scale, window)[None], None

    # -- the decoding step --------------------------------------------------------------------

    def _step(self) -> None:
        """One decoding step of every slot: logits, next tokens and positions, in place."""
        pos = self.positions
        end = (pos + 1).to(torch.int32)
        self.bounds[:, 1].copy_(end)
        if self.window:
            self.window_bounds[:, 0].copy_((end - self.window).clamp(min=0))
            self.window_bounds[:, 1].copy_(end)
        hidden = self.decoder(input_ids=self.tokens[:, None], position_ids=pos[:, None], use_cache=False)
        logits = self.head(hidden.last_hidden_state[:, -1])
        self.logits.copy_(logits)
        self.tokens.copy_(logits.argmax(-1))
        # a free slot stays at position 0: its attention reads one key, not its last request's
        self.positions.copy_(((pos + 1) * self.active).clamp(max=self.slot_len - 1))

    def _prefill_forward(self, packing: Packing) -> torch.Tensor:
        """The packed prompts through the model into their slots: the logits at each one's last token."""
        config = self.model.config
        self._packing, self._prefilling = packing, True
        config._attn_implementation = self._attention_names[1]
        try:
            with sdpa_kernel(PREFILL_ATTENTION):
                out = self.decoder(input_ids=packing.ids, position_ids=packing.positions, use_cache=False)
        finally:
            self._packing, self._prefilling = None, False
            config._attn_implementation = self._attention_names[0]
        return self.head(out.last_hidden_state[0, packing.last])

    # -- serving --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread (it compiles and captures the step first); idempotent."""
        with self._start_lock:
            if self._thread is None:
                ready = threading.Event()
                self._thread = threading.Thread(target=self._serve, args=(ready,), name="nerfleet-slots", daemon=True)
                self._thread.start()
                ready.wait()
                if self._replay is None:
                    raise RuntimeError("the continuous engine's decoding step could not be prepared (see the log)")

    def close(self) -> None:
        """Stop the loop thread once the requests in hand are answered, and free the slot cache."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join()
            self._thread = None
        self.keys = self.values = []
        self._replay = None
        if on_cuda(self.model):
            torch.cuda.empty_cache()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        self.start()
        call = Call([None] * len(requests), len(requests))
        now = time.perf_counter()
        for i, (req, (ids, truncated)) in enumerate(zip(requests, self.encode_all(requests))):
            budget = max(1, min(req.max_new_tokens, self.slot_len - len(ids)))
            self._inbox.put(SlotRequest(req, ids, truncated, call, i, budget, now))
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.results

    def _serve(self, ready: threading.Event) -> None:
        try:
            with torch.inference_mode():
                self._replay = self._capture()
        except Exception:
            log.exception("continuous engine: preparing the decoding step failed")
            ready.set()
            return
        ready.set()
        with torch.inference_mode():
            while True:
                try:
                    if not any(self._held):
                        self._hand_back()  # no window to overlap with: before waiting for more
                    if not self._admit():
                        return
                    self._prefill_free_slots()
                    if any(self._held):
                        self._decode_window()
                except Exception as exc:  # noqa: BLE001 - every caller in flight gets the error
                    log.warning("continuous engine: %s: %s; failing the requests in hand", type(exc).__name__, exc)
                    self._fail_all(exc)

    def _admit(self) -> bool:
        """Move what has arrived to the waiting line (waiting for it when idle); False once closed
        and idle."""
        idle = not any(self._held) and not self._waiting
        if idle and self._closing:
            return False
        block = idle
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            if item is None:
                self._closing = True
            else:
                self._waiting.append(item)
            if self._closing and not any(self._held) and not self._waiting:
                return False
            block = False

    def _fail_all(self, exc: BaseException) -> None:
        self._hand_back()  # those that ended are answered
        for item in [*self._held, *self._waiting]:
            if item is not None:
                item.call.fail(exc)
        self._held = [None] * self.slots
        self._waiting.clear()
        self._pending = None
        if on_cuda(self.model):
            torch.cuda.empty_cache()

    # -- prefill --------------------------------------------------------------------------------

    def _prefill_free_slots(self) -> None:
        cfg = self.config
        if self._waiting and not all(self._held):
            # the window in flight read first: a prefill waits for it anyway, and the slots it frees
            # are filled by the same prefill
            self._settle_pending(time.perf_counter())
        while self._waiting:
            free = [s for s, item in enumerate(self._held) if item is None]
            if not free:
                return
            ahead = list(itertools.islice(self._waiting, 4 * cfg.prefill_rows))
            self._find_prefixes(ahead, free[0])
            # the next requests in line, packed without padding, within the call's rows and tokens
            group: list[SlotRequest] = []
            tokens = 0
            for item in ahead:
                tokens += len(item.ids) - self._kept(item)
                if group and (len(group) == min(len(free), cfg.prefill_rows) or tokens > cfg.prefill_tokens):
                    break
                group.append(item)
            for _ in group:
                self._waiting.popleft()
            self._prefill(group, free[: len(group)])

    @staticmethod
    def _kept(item: SlotRequest) -> int:
        return item.prefix[1] if item.prefix else 0

    def _find_prefixes(self, ahead: list[SlotRequest], spare: int) -> None:
        """Each waiting request's kept prefix; new ones computed now in the ``spare`` slot."""
        if self.prefixes is not None:
            for entry, prefix in self.prefixes.match(ahead):
                self._keep_prefix(entry, prefix, spare)

    def _keep_prefix(self, entry: int, prefix: list[int], slot: int) -> None:
        """A prefix's keys and values: prefilled alone into a free slot, copied into its entry."""
        n = len(prefix)
        self._prefill_forward(self._pack([prefix], [0], [slot]))
        for layer in range(len(self.keys)):
            self.prefixes.keys[layer][entry, :, :n] = self.keys[layer][slot, :, :n]
            self.prefixes.values[layer][entry, :, :n] = self.values[layer][slot, :, :n]
        self.stats["prefixes_kept"] += 1

    def _prefill(self, group: list[SlotRequest], slots: list[int]) -> None:
        """These requests prefilled into these slots, each after its kept prefix (if any)."""
        start = time.perf_counter()
        dev = self.model.device
        kept = [self._kept(x) for x in group]
        entries = [x.prefix[0] if x.prefix else 0 for x in group]
        packing = self._pack([x.ids for x in group], kept, slots, entries)
        logits = self._prefill_forward(packing).float()
        self._hand_back()  # while the GPU prefills
        self._guide_prefill(group, logits)
        self.stats["prompt_tokens"] += sum(len(x.ids) for x in group)  # the whole prompts: the workload's
        self.stats["prefix_tokens"] += sum(kept)
        self.stats["prefill_positions"] += sum(packing.q_lens)
        self.stats["prefills"] += 1
        first = logits.argmax(-1)
        index = torch.tensor(slots, device=dev)
        self.tokens[index] = first
        self.positions[index] = torch.tensor([len(x.ids) for x in group], device=dev)
        self.active[index] = 1
        first = first.tolist()
        self.stats["prefill_s"] += time.perf_counter() - start
        for slot, item, token in zip(slots, group, first):
            self._held[slot] = item
            self._take(slot, [token])
        if self.on_first_token is not None:
            self.on_first_token(time.time())
            self.on_first_token = None

    # -- decoding -------------------------------------------------------------------------------

    def _decode_window(self) -> None:
        """Queue the next window of decoding steps, then read the window queued before it (which
        the GPU ran meanwhile): the host takes a window's tokens, and hands its answers back, while
        the GPU runs the next one, so the GPU does not wait on the host between windows. A request
        that ends by its stop token inside a window has its slot run one window more, its tokens
        ignored; one that ends by its budget is known to, and its slot reads one key from then on.
        Guided slots take their tokens step by step: nothing else is queued while they run."""
        start = time.perf_counter()
        if self._guided_in_hand():
            self._settle_pending(start)
            if self._guided_in_hand():
                self._decode_guided(time.perf_counter())
            return
        pending = self._pending
        steps, live, ending = self._steps_after(pending)
        if pending is not None and (not steps or (ending and self._waiting)):
            # every request ends within the pending window, or a slot frees at its end and a request
            # waits for it: read it now, so that the slot is refilled before the next window (the
            # loop prefills, then comes back); with nothing pending, every request has steps left
            self._settle_pending(start)
            return
        self._pending = self._launch(steps)
        self._count_keys(steps, live)
        if pending is not None:
            self._settle(pending, start)
        self._hand_back()  # while the GPU runs the window just queued

    def _guided_in_hand(self) -> bool:
        return any(item is not None and item.matcher is not None for item in self._held)

    def _settle_pending(self, start: float) -> None:
        """Read the window in flight, if any (nothing is queued after it)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._settle(pending, start)

    def _count_keys(self, steps: int, live: list[int]) -> None:
        """The keys a window's steps read for the requests taking part (each ``live`` at the first
        step, one more a step): the floor's count."""
        self.stats["keys_read"] += steps * sum(live) + len(live) * steps * (steps - 1) // 2

    def _steps_after(self, pending: Window | None) -> tuple[int, list[int], bool]:
        """How many steps the next window takes: up to ``check_every``, and no more than any
        request has left once the ``pending`` window's steps are counted (0: every request in hand
        ends within the pending window); the keys each request taking part reads at its first step
        (for the floor's count); whether a request ends in the pending window by its budget. Such
        a request has its slot marked free now: from the next step on its attention reads one key."""
        left, live, ending = [], [], False
        for slot, item in enumerate(self._held):
            if item is None:
                continue
            queued = pending.steps if pending is not None and pending.held[slot] is item else 0
            rest = item.budget - len(item.out) - queued
            if rest > 0:
                left.append(rest)
                live.append(len(item.ids) + len(item.out) + queued + 1)
            else:
                self.active[slot] = 0
                ending = True
        return (min(self.config.check_every, *left) if left else 0), live, ending

    def _launch(self, steps: int) -> Window:
        """Queue ``steps`` decoding steps and the copy of their tokens to the host (into the buffer
        the pending window does not use)."""
        for i in range(steps):
            self._replay()
            self.history[i].copy_(self.tokens)
        self._buffers.reverse()
        self._buffers[0].stage(self.history[:steps])
        return Window(steps, list(self._held), self._buffers[0])

    def _settle(self, window: Window, start: float) -> None:
        """Read a window's tokens (waiting for its steps, not for what was queued after them) and
        give each request still in its slot its own: a slot refilled since holds another request."""
        tokens = window.tokens.read()
        self.stats["decode_s"] += time.perf_counter() - start
        self.stats["steps"] += window.steps
        columns = list(zip(*tokens))
        for slot, item in enumerate(window.held):
            if item is not None and self._held[slot] is item:
                # a guided window took its guided slots' tokens step by step, all but the last
                self._take(slot, columns[slot][window.steps - 1 :] if item.matcher is not None else columns[slot])
        self.stats["host_s"] += time.perf_counter() - start

    def _decode_guided(self, start: float) -> None:
        """A window with guided slots, read at once (its steps pipelined within it)."""
        held = [item for item in self._held if item is not None]
        guided = [s for s, item in enumerate(self._held) if item is not None and item.matcher is not None]
        left = min(item.budget - len(item.out) for item in held)
        steps = max(1, min(self.config.check_every, left))
        self._count_keys(steps, [len(item.ids) + len(item.out) + 1 for item in held])
        self._guided_window(guided, steps)
        self._buffers[0].stage(self.history[:steps])
        self._hand_back()  # while the GPU runs the window's last steps
        self._settle(Window(steps, list(self._held), self._buffers[0]), start)

    def _take(self, slot: int, tokens: Sequence[int]) -> None:
        """Append a slot's new tokens; a request that has ended frees its slot, its answer set aside
        for :meth:`_hand_back`."""
        item = self._held[slot]
        stops = self.stops
        if item.matcher is None and len(tokens) < item.budget - len(item.out) and stops.isdisjoint(tokens):
            item.out.extend(tokens)  # the common case, without a look at each token
            self.stats["generated"] += len(tokens)
            return
        for token in tokens:
            if token in stops:
                self._finish(slot)
                return
            item.out.append(token)
            self.stats["generated"] += 1
            if item.matcher is not None:
                self._masks.accept(item.matcher, token)
            if len(item.out) >= item.budget:
                self._finish(slot)
                return

    def _finish(self, slot: int) -> None:
        item = self._held[slot]
        self._held[slot] = None
        self.active[slot] = 0
        self.positions[slot] = 0
        self._ended.append((item, time.perf_counter() - item.arrived))

    def _hand_back(self) -> None:
        """Answer the requests that have ended. Their callers' threads wake to store the answers
        and take the interpreter's lock as they do; handed back while the GPU has work queued (a
        window's steps, a prefill), that costs the GPU nothing, where handed back as each request
        ended it held this loop, and the GPU with it, between windows."""
        ended, self._ended = self._ended, []
        for item, latency in ended:
            try:
                result = self._result(item.req, item.ids, item.out, item.truncated, latency)
            except Exception as exc:  # noqa: BLE001 - its caller gets the error, the others their answers
                item.call.fail(exc)
                continue
            item.call.deliver(item.index, result)

    # -- guided decoding: the slots' masks filled on the host, applied to the step's logits ------

    def _guide_prefill(self, group: list[SlotRequest], logits: torch.Tensor) -> None:
        rows = [k for k, item in enumerate(group) if item.req.guide]
        if not rows:
            return
        if self._masks is None:
            most = max(self.slots, self.config.prefill_rows)
            self._masks = Masks(self.grammars, most, pinned=on_cuda(self.model))
        for k in rows:
            group[k].matcher = self._masks.matcher(group[k].req.guide)
        self._masks.apply(logits, [(k, group[k].matcher, group[k].req.guide, group[k].budget) for k in rows])
        self.stats["guide_s"] = self._masks.seconds

    def _guided_window(self, slots: list[int], steps: int) -> None:
        """``steps`` decoding steps with guided slots, pipelined: step i's forward is launched
        first; while it runs, the host takes step i-1's guided tokens (staged to pinned memory
        behind their own event, so reading them does not wait for the forward), which their
        matchers accept, and fills step i's masks; the masks then go up from pinned memory and the
        guided slots' tokens are chosen again. The GPU waits only when the host's half of a step
        takes longer than a forward. A guided request that ends inside the window is answered
        there; its slot runs on all-allowed until the window ends, and what it makes is ignored."""
        index = torch.tensor(slots, device=self.model.device)
        for i in range(steps):
            self._replay()
            if i:
                for slot, token in zip(slots, self._staged.read()):  # step i-1's tokens
                    if self._held[slot] is not None:
                        self._take(slot, [token])
            held = [(k, self._held[s]) for k, s in enumerate(slots)]
            live = [(k, x.matcher, x.req.guide, x.budget - len(x.out)) for k, x in held if x is not None]
            mask = self._masks.fill(len(slots), live)
            logits = self.logits.index_select(0, index).float()
            self._masks.mask(logits, mask)
            chosen = logits.argmax(-1)
            self.tokens.index_copy_(0, index, chosen)
            if i + 1 < steps:
                self._staged.stage(chosen)
            self.history[i].copy_(self.tokens)
        self.stats["guide_s"] = self._masks.seconds
