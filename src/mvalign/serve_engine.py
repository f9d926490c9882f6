"""Continuous batching at per-request ω: the engine behind `mvalign serve` (`mvalign.serve`).

One thread owns the model. Requests wait in a bounded queue; at every decode-step boundary the engine admits waiting
requests into the running batch (up to `rows_per_pass` rows), prefills them together, and then advances every
running row by one token in one forward pass. Row i is computed at its own ω(i) by the mixed-ω hooks
(`mvalign.mixed`): y_i = W0 x_i + Σ_k ω_k(i) s_k B_k (A_k x_i), so one copy of the base weights serves every
trade-off at once and each row equals the merged model W0 + Σ_k ω_k(i) ΔW_k at its ω.

The batch's KV cache is left-padded: a row admitted later is padded on the left to the batch's cache length (and
the batch to the row's, when the row is longer); the attention mask hides the padding and each row carries its own
position ids, so padding changes no row's result. Finished or abandoned rows leave the batch at the next boundary
and columns that only held padding are cut.

Next token: argmax when temperature is 0 (greedy: the same text as the merged model), else a sample from
softmax(logits / temperature) restricted to the smallest set of tokens whose probability reaches top_p, drawn from
the request's own generator (seeded by its `seed`), so a request's sample never depends on its batch-mates.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .errors import MvalignError
from .mixed import MixedLoRA


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """A cache tensor (batch, heads, length, dim) with n zero positions before its sequence."""
    return F.pad(t, (0, 0, n, 0)) if n else t


class QueueFullError(MvalignError, RuntimeError):
    """More requests are waiting than the server accepts (`max_waiting`)."""


@dataclass
class GenRequest:
    """One generation: prompt token ids, ω in the engine's value order, limits and sampling; `emit(delta, finish)`
    is called from the engine thread with each new piece of text and, last, the finish reason ('stop' | 'length' |
    'cancelled' | 'error: ...')."""

    ids: list[int]
    weights: list[float]
    max_tokens: int
    emit: Callable[[str, str | None], None]
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    cancelled: bool = False
    out: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    generator: torch.Generator | None = None

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits (greedy at temperature 0)."""
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        scaled = logits.double() / self.temperature
        if not torch.isfinite(scaled.max()):  # a temperature so small that logits / T overflows: its limit, greedy
            return int(torch.argmax(logits))
        probs = torch.softmax(scaled, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < self.top_p  # the smallest head reaching top_p
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed if self.seed is not None
                                                           else int(time.time_ns() % 2**63))
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))


@dataclass
class EngineStats:
    steps: int = 0
    """Forward passes (prefills and decode steps)."""
    rows: int = 0
    """Σ rows over the passes (rows / steps: the mean batch)."""
    tokens: int = 0
    peak_cache_mb: float = 0.0
    """The largest KV cache the batch has held."""


class Engine:
    """The model, its mixed-ω hooks and the running batch; `submit` from any thread, `start` / `stop` the loop."""

    def __init__(self, mixed: MixedLoRA, tokenizer, rows_per_pass: int = 16, max_waiting: int = 64) -> None:
        self.mixed, self.model, self.tokenizer = mixed, mixed.model, tokenizer
        self.rows_per_pass, self.max_waiting = rows_per_pass, max_waiting
        self.device = next(self.model.parameters()).device
        eos = self.model.generation_config.eos_token_id
        self.eos = {t for t in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]
                    if t is not None}
        self.stats = EngineStats()
        # transformers renamed the forward's cache argument (5.x: past_key_values -> cache)
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # no logits for the prompt
        self._waiting: deque[GenRequest] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="mvalign-engine", daemon=True)
        self._rows: list[GenRequest] = []
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._next = torch.zeros(0, dtype=torch.long)  # each row's next position
        self._last = torch.zeros(0, dtype=torch.long)  # each row's last token

    @property
    def busy(self) -> tuple[int, int]:
        """(running rows, waiting requests)."""
        return len(self._rows), len(self._waiting)

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, req: GenRequest) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(f"{len(self._waiting)} requests are waiting (the limit); retry later")
            self._waiting.append(req)
            self._cond.notify()

    def _run(self) -> None:
        with torch.no_grad(), self.mixed.hooks():
            while True:
                with self._cond:
                    while not self._stopped and not self._waiting and not self._rows:
                        self._cond.wait()
                    if self._stopped:
                        break
                    new = []
                    while self._waiting and len(self._rows) + len(new) < self.rows_per_pass:
                        req = self._waiting.popleft()
                        if not req.cancelled:
                            new.append(req)
                try:
                    logits = self._prefill(new) if new else self._decode()
                    self._advance(logits, len(self._rows) - logits.shape[0])
                except Exception as e:  # noqa: BLE001 - the server stays up; the rows in flight get the error
                    for req in self._rows + [r for r in new if r not in self._rows]:
                        req.emit("", f"error: {type(e).__name__}: {str(e)[:200]}")
                    self._select([])  # the batch is dropped whole: the next request starts a fresh one
        for req in self._rows + list(self._waiting):
            req.emit("", "cancelled")

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, rows: list[GenRequest],
                 cache: DynamicCache) -> torch.Tensor:
        self.mixed.set_rows([r.weights for r in rows])
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=pos.to(self.device), use_cache=True, **{self._cache_arg: cache},
                         **self._last_only)
        self.stats.steps += 1
        self.stats.rows += len(rows)
        size = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
                   if t is not None)
        self.stats.peak_cache_mb = max(self.stats.peak_cache_mb, size / 2**20)
        return out.logits[:, -1].float().cpu()

    def _prefill(self, new: list[GenRequest]) -> torch.Tensor:
        """Run the new rows' prompts (left-padded, together) and join their cache to the batch's."""
        length = max(len(r.ids) for r in new)
        ids = torch.full((len(new), length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(new), length), dtype=torch.long)
        for i, r in enumerate(new):
            ids[i, length - len(r.ids):] = torch.tensor(r.ids)
            mask[i, length - len(r.ids):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, pos, new, cache)
        old = [] if self._cache is None else [(layer.keys, layer.values) for layer in self._cache.layers]
        fresh = [(layer.keys, layer.values) for layer in cache.layers]
        target = max(length, self._mask.shape[1])
        if old:
            n_old, n_new = target - self._mask.shape[1], target - length
            merged = [(torch.cat([_left_pad(ko, n_old), _left_pad(kn, n_new)]),
                       torch.cat([_left_pad(vo, n_old), _left_pad(vn, n_new)])) for (ko, vo), (kn, vn) in zip(old, fresh)]
            self._mask = torch.cat([F.pad(self._mask, (n_old, 0)), F.pad(mask, (n_new, 0))])
        else:
            merged, self._mask = fresh, mask
        self._cache = DynamicCache(ddp_cache_data=merged, config=self.model.config)
        self._next = torch.cat([self._next, mask.sum(-1)])
        self._last = torch.cat([self._last, torch.zeros(len(new), dtype=torch.long)])
        self._rows = self._rows + new
        return logits

    def _decode(self) -> torch.Tensor:
        """One token for every running row, in one forward pass."""
        self._mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=torch.long)], dim=1)
        logits = self._forward(self._last[:, None], self._mask, self._next[:, None], self._rows, self._cache)
        self._next = self._next + 1
        return logits

    def _advance(self, logits: torch.Tensor, start: int) -> None:
        """Choose the next token of rows start.. (those in this pass; a prefill leaves the running rows for the next
        decode, their last token already queued), emit text, and drop finished or cancelled rows."""
        keep = list(range(start))
        for i in range(start, len(self._rows)):
            req = self._rows[i]
            finish = "cancelled" if req.cancelled else self._step(req, i, logits[i - start])
            if finish is None:
                keep.append(i)
            else:
                req.emit(req.text[req.sent:] if finish != "cancelled" else "", finish)
        self._select(keep)

    def _step(self, req: GenRequest, row: int, logits: torch.Tensor) -> str | None:
        token = req.choose(logits)
        self._last[row] = token
        self.stats.tokens += 1
        if token in self.eos and not req.ignore_eos:
            return "stop"
        req.out.append(token)
        req.text = self.tokenizer.decode(req.out, skip_special_tokens=True)
        for s in req.stop:
            at = req.text.find(s)
            if at >= 0:
                req.text = req.text[:at]
                return "stop"
        if len(req.out) >= req.max_tokens:
            return "length"
        hold = max((len(s) - 1 for s in req.stop), default=0)  # a stop string may still be completing
        upto = max(req.sent, len(req.text) - hold)
        if upto > req.sent and not req.text.endswith("\ufffd"):  # never split a multi-byte character
            req.emit(req.text[req.sent:upto], None)
            req.sent = upto
        return None

    def _select(self, keep: list[int]) -> None:
        """Keep these rows of the batch (cache, mask, positions); cut columns that only hold padding."""
        if keep and len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache = [], None
            self._mask, self._next, self._last = self._mask[:0, :0], self._next[:0], self._last[:0]
            return
        idx = torch.tensor(keep)
        mask = self._mask[idx]
        first = int((mask.sum(0) > 0).nonzero()[0])
        self._cache = DynamicCache(ddp_cache_data=[(layer.keys[idx.to(layer.keys.device), :, first:],
                                                    layer.values[idx.to(layer.keys.device), :, first:])
                                                   for layer in self._cache.layers], config=self.model.config)
        self._mask, self._next, self._last = mask[:, first:], self._next[idx], self._last[idx]
        self._rows = [self._rows[i] for i in keep]
