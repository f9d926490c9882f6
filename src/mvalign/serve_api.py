"""The HTTP side of `mvalign serve` (FastAPI): OpenAI request bodies validated with pydantic, OpenAI-style errors,
streamed answers as server-sent events. The trade-off, presets and limits are `mvalign.serve.Server`'s."""

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .serve import Server


class ApiError(Exception):
    """A refused request: OpenAI's error body with `status` (4xx), naming the field (`param`)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields a server may ignore (user, ...)

    model: str
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    ignore_eos: bool = False
    """vLLM's extension: generate max_tokens whatever the model says (for load tests)."""
    mvalign: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = _as_list(v)
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 non-empty stop strings")
        return v

    @field_validator("mvalign")
    @classmethod
    def _trade_off(cls, v):
        if v is not None and (set(v) - {"weights", "preset"} or not isinstance(v.get("weights") or {}, dict)):
            raise ValueError('give {"weights": {value: number}} or {"preset": name}')
        return v

    def model_post_init(self, _ctx) -> None:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens

    def stop_list(self) -> list[str]:
        return _as_list(self.stop)


def _as_list(stop: str | list[str] | None) -> list[str]:
    """OpenAI's `stop`: one string, a list of them, or none."""
    return [stop] if isinstance(stop, str) else list(stop or [])


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(
            str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Body):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Body):
    prompt: str = Field(min_length=1)


def parse_request(raw: bytes, kind: type[_Body]) -> _Body:
    """The request body as `kind`, or one ApiError naming the field."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(f"the body is not JSON ({str(e)[:100]})") from None
    if not isinstance(data, dict):
        raise ApiError("the body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(f"{param}: {err['msg']}", param) from None


def completion_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def _answer(req, pending, text: str, finish: str, completion_tokens: int, cid: str) -> dict:
    chat = isinstance(req, ChatRequest)
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish} if chat else
              {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
    return {"id": cid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": req.model, "choices": [choice],
            "usage": {"prompt_tokens": pending.prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": pending.prompt_tokens + completion_tokens}}


def _chunk(req, cid: str, delta: str, finish: str | None, first: bool) -> str:
    if isinstance(req, ChatRequest):
        d = ({"role": "assistant", "content": delta} if first else {"content": delta}) if delta or first else {}
        choice = {"index": 0, "delta": d, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice, obj = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}, "text_completion"
    return "data: " + json.dumps({"id": cid, "object": obj, "created": int(time.time()), "model": req.model,
                                  "choices": [choice]}) + "\n\n"


def create_app(server: "Server") -> "FastAPI":
    """The app (FastAPI resolves the routes' annotations at runtime: this module keeps them unquoted)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="mvalign serve", docs_url=None, redoc_url=None, openapi_url=None)

    def refuse(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    def authorised(request: Request) -> None:
        if server.api_key and request.headers.get("authorization") != f"Bearer {server.api_key}":
            raise ApiError("missing or wrong API key (Authorization: Bearer KEY)", None, 401, "invalid_api_key")

    @app.get("/health")
    async def health() -> dict:
        running, waiting = server.engine.busy
        return {"status": "ok", "method": server.method, "values": server.values, "running": running,
                "waiting": waiting}

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            authorised(request)
        except ApiError as e:
            return refuse(e)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": server.created,
                                            "owned_by": "mvalign"} for m in server.models()]}

    async def generate(request: Request, kind: type[_Body]):
        try:
            authorised(request)
            size = int(request.headers.get("content-length") or 0)
            raw = await request.body() if size <= server.limits.max_body else b""
            if size > server.limits.max_body or len(raw) > server.limits.max_body:
                raise ApiError(f"the body is larger than {server.limits.max_body} bytes", None, 413)
            req = parse_request(raw, kind)
            pending = server.submit(req, asyncio.get_running_loop())
        except ApiError as e:
            return refuse(e)
        cid = completion_id(kind is ChatRequest)
        if req.stream:
            return StreamingResponse(_stream(server, req, pending, cid), media_type="text/event-stream")
        parts, finish = [], None
        try:
            async with asyncio.timeout(server.limits.timeout_s):
                while finish is None:
                    delta, finish = await pending.events.get()
                    parts.append(delta)
        except TimeoutError:
            return refuse(ApiError(f"no answer within {server.limits.timeout_s} s", None, 408, "timeout"))
        finally:
            if finish is None:  # the client went away: the row leaves the batch at the next step
                pending.request.cancelled = True
        if finish.startswith("error"):
            return JSONResponse(ApiError(finish, None, 500, "server_error").body(), status_code=500)
        return _answer(req, pending, "".join(parts).strip(), finish, len(pending.request.out), cid)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, ChatRequest)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, CompletionRequest)

    return app


async def _stream(server: "Server", req, pending, cid: str):
    """Server-sent events: one chunk per piece of text, the finish reason, then [DONE]; a client that disconnects
    cancels its row."""
    finish, first, started = None, True, False
    try:
        async with asyncio.timeout(server.limits.timeout_s):
            while finish is None:
                delta, finish = await pending.events.get()
                if not started:
                    delta = delta.lstrip()
                    started = bool(delta)
                if delta or first:
                    yield _chunk(req, cid, delta, None, first)
                    first = False
        if finish.startswith("error"):  # the engine failed on this batch: say so in the stream, as OpenAI does
            yield "data: " + json.dumps(ApiError(finish, None, 500, "server_error").body()) + "\n\n"
        else:
            yield _chunk(req, cid, "", "stop" if finish == "cancelled" else finish, False)
        yield "data: [DONE]\n\n"
    finally:
        if finish is None:
            pending.request.cancelled = True
