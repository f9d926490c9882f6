"""`mvalign serve RUN`: an OpenAI-compatible server where every request chooses its own trade-off.

The base model and the method's value vectors are loaded once; requests at different ω share forward passes
(`mvalign.serve_engine`: continuous batching with per-row ω). Endpoints: POST /v1/chat/completions and
/v1/completions (streamed as server-sent events with "stream": true, else one JSON answer; max_tokens, temperature,
top_p, stop, seed), GET /v1/models, GET /health.

The trade-off of a request, first that applies:
  body field  "mvalign": {"weights": {"helpful": 1.2, "harmless": 0.8}}   (openai client: extra_body=...)
              "mvalign": {"preset": "NAME"}
  model id    "NAME" of a preset saved by `mvalign pick RUN ... --save-preset NAME` (listed by /v1/models), or
              "omega:helpful=1.2,harmless=0.8" — so an unmodified OpenAI client can choose a trade-off
  default     the method's own name as model id: ω = 1 for every value (W0 + Σ_k ΔW_k)
A value left out of "weights" gets 0. |ω_k| may not exceed `max_weight` (default: the largest |ω| of the run's sweep
grid, at least 1): beyond the range the front was measured on, a model is extrapolated without evidence.

Bad input never stops the server: every refusal is an OpenAI-style JSON error {"error": {"message", "type", "param",
"code"}} with a 4xx status naming the field. Binds 127.0.0.1 unless told otherwise; any other host needs --api-key
(checked as "Authorization: Bearer KEY" on every endpoint but /health).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

from .config import ConfigError
from .rundir import RunDir
from .serve_api import ApiError, ChatRequest, CompletionRequest, parse_request
from .serve_engine import Engine, GenRequest, QueueFullError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def read_presets(run: RunDir) -> dict[str, dict]:
    """{name: {"method", "weights"}} saved by `mvalign pick --save-preset` (RUN/presets.json)."""
    path = run.presets_path
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or not all(isinstance(p, dict) and isinstance(p.get("weights"), dict)
                                                for p in raw.values()):
            raise ValueError("not a mapping of name -> {method, weights}")
    except ValueError as e:
        raise ConfigError(f"{path}: not a presets file ({e}); remove it and save the presets again") from None
    return raw


def save_preset(run_dir, name: str, method: str, weights: dict[str, float]) -> None:
    """Add (or replace) the preset `name` in RUN/presets.json: `method`'s model at ω = `weights`."""
    from .errors import write_atomic

    run = RunDir(run_dir)
    if not name or name.startswith("omega:") or any(c in name for c in "\n\r\t"):
        raise ConfigError(f"--save-preset: {name!r} is not a usable name (no 'omega:' prefix, no control characters)")
    presets = read_presets(run) | {name: {"method": method, "weights": dict(weights)}}
    write_atomic(run.presets_path, "the presets", lambda tmp: tmp.write_text(json.dumps(presets, indent=1)))


@dataclass
class Pending:
    """A submitted request: its events (delta, finish reason), the engine's request (set `cancelled` to drop it)."""

    events: asyncio.Queue
    request: GenRequest
    prompt_tokens: int


@dataclass
class Limits:
    max_weight: float
    max_tokens: int = 512
    max_body: int = 1 << 20
    timeout_s: float = 300.0


class Server:
    """What the HTTP layer needs: the engine, the value order, presets, limits, the tokenizer and its context."""

    def __init__(self, engine: Engine, values: list[str], method: str, limits: Limits,
                 presets: dict[str, dict] | None = None, chat: bool = True, api_key: str | None = None) -> None:
        self.engine, self.values, self.method, self.limits = engine, values, method, limits
        self.presets = {k: p for k, p in (presets or {}).items() if p.get("method", method) == method}
        self.chat, self.api_key = chat, api_key
        self.tokenizer = engine.tokenizer
        self.context = int(getattr(engine.model.config, "max_position_embeddings", 0) or 2048)
        self.created = int(time.time())

    def models(self) -> list[str]:
        return [self.method, *self.presets]

    def weights(self, model: str, extra: dict | None) -> list[float]:
        """ω for a request, in the engine's value order (see the module docstring)."""
        extra = extra or {}
        if extra.get("weights") is not None:
            given, param = extra["weights"], "mvalign.weights"
        elif extra.get("preset") is not None or model in self.presets:
            name = extra.get("preset") or model
            if name not in self.presets:
                raise ApiError(f"no preset {name!r}; saved: {sorted(self.presets)}", "mvalign.preset", 404)
            given, param = self.presets[name]["weights"], "mvalign.preset"
        elif model.startswith("omega:"):
            try:
                given = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in model[6:].split(",") if p.strip())}
            except ValueError:
                raise ApiError(f"model {model!r}: write ω as omega:value=number,...", "model") from None
            param = "model"
        elif model == self.method:
            given, param = dict.fromkeys(self.values, 1.0), "model"
        else:
            raise ApiError(f"no model {model!r}; use {self.models()} or omega:value=number,...", "model", 404)
        unknown = sorted(set(given) - set(self.values))
        if unknown:
            raise ApiError(f"{param}: {unknown} not a value of this run (values: {self.values})", param)
        out = []
        for v in self.values:
            w = given.get(v, 0.0)
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
                raise ApiError(f"{param}[{v!r}] is {w!r}, not a finite number", param)
            if abs(w) > self.limits.max_weight:
                raise ApiError(f"{param}[{v!r}] = {w}: |ω| above {self.limits.max_weight}, the range this run's front "
                               "was measured on", param)
            out.append(float(w))
        return out

    def prompt_ids(self, req: ChatRequest | CompletionRequest) -> list[int]:
        from .models import format_prompt

        if isinstance(req, ChatRequest):
            text = format_prompt(self.tokenizer, [m.as_dict() for m in req.messages], self.chat)
            ids = self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]
        else:
            ids = self.tokenizer(req.prompt)["input_ids"]
        if not ids:
            raise ApiError("the prompt is empty", "messages" if isinstance(req, ChatRequest) else "prompt")
        return ids

    def submit(self, req: ChatRequest | CompletionRequest, loop: asyncio.AbstractEventLoop) -> Pending:
        """Queue the generation; its (delta, finish) events arrive on the returned `Pending.events`."""
        omega = self.weights(req.model, req.mvalign)
        ids = self.prompt_ids(req)
        # left out: as many as the server's limit and the context leave (OpenAI's default: until the context ends)
        room = max(1, self.context - len(ids))
        max_tokens = req.max_tokens if req.max_tokens is not None else min(self.limits.max_tokens, room)
        if max_tokens > self.limits.max_tokens:
            raise ApiError(f"max_tokens {max_tokens} above this server's limit {self.limits.max_tokens}", "max_tokens")
        if len(ids) + max_tokens > self.context:
            raise ApiError(f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}: more than the model's "
                           f"context of {self.context} tokens", "messages" if isinstance(req, ChatRequest) else "prompt")
        events: asyncio.Queue = asyncio.Queue()
        gen = GenRequest(ids, omega, max_tokens, lambda d, f: loop.call_soon_threadsafe(events.put_nowait, (d, f)),
                         req.temperature, req.top_p, req.seed, req.stop_list(), req.ignore_eos)
        try:
            self.engine.submit(gen)
        except QueueFullError as e:
            raise ApiError(str(e), None, 429, "rate_limit_exceeded") from None
        return Pending(events, gen, len(ids))


def load_server(run_dir, method: str = "mva", rows_per_pass: int = 16, max_waiting: int = 64,
                max_weight: float | None = None, max_tokens: int = 512, api_key: str | None = None) -> Server:
    """The run's base model with `method`'s value vectors behind a started engine (the run's base model is checked
    against the one its adapters were trained on)."""
    from .combine import load_lora_adapter
    from .methods import get_method
    from .mixed import MixedLoRA
    from .models import cache_root, load_model

    run = RunDir(run_dir)
    cfg = run.load_config()
    m = get_method(method)
    if not m.exportable:
        raise ConfigError(f"--method {method}: its models are not weight combinations of value vectors (serve one "
                          "of: the methods `mvalign methods` lists as value-vectors, other than the decode-time "
                          "fusions mod / mod-mva)")
    plan = m.plan(cfg, run)
    missing = [str(run.adapter(r)) for r in plan.refs if not run.adapter(r).is_dir()]
    if missing:
        raise ConfigError(f"{method}: adapters not trained yet: {missing}; run `mvalign train CONFIG --method {method}`")
    model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
    run.check_base(model, cfg.model.name)
    mixed = MixedLoRA(model, [load_lora_adapter(run.adapter(r), r.name) for r in plan.refs])
    bound = max_weight if max_weight is not None else max([1.0, *(abs(g) for g in cfg.sweep.grid)])
    engine = Engine(mixed, tokenizer, rows_per_pass, max_waiting).start()
    chat = cfg.model.chat_template == "auto"  # as the sweep formats prompts (`generate.format_texts`)
    return Server(engine, list(mixed.names), method, Limits(bound, max_tokens), read_presets(run), chat, api_key)


def check_host(host: str, api_key: str | None) -> None:
    if host not in LOCAL_HOSTS and not api_key:
        raise ConfigError(f"--host {host}: serving beyond this machine needs --api-key (clients then send "
                          "Authorization: Bearer KEY)")


__all__ = ["Limits", "Server", "check_host", "load_server", "parse_request", "read_presets", "save_preset"]
