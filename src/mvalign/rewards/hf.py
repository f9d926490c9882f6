"""Any Hugging Face sequence-classification reward model (local directory or hub name)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..devices import place, resolve_device
from .base import RewardError, RewardModel, prompt_text


def folder_fingerprint(path: str) -> str:
    """For a local model folder: sha256 over its files' names, sizes and first and last MiB (a model replaced at
    the same path gets new cached scores); '' for a hub name (its commit hash identifies it)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return ""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(folder)}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()[:16]


class HFRewardModel(RewardModel):
    """Score = the model's first logit for the dialogue (user prompt, assistant response), formatted with the reward
    model's chat template when it has one, else as "<prompt>\\n\\n<response>"; negated when `cost`."""

    def __init__(self, path: str, name: str, cost: bool = False, batch_size: int = 16, max_length: int = 512,
                 trust_remote_code: bool = False, device: str = "auto") -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(  # safetensors only: never a pickle
                path, trust_remote_code=trust_remote_code, use_safetensors=True).eval()
            self.device = resolve_device(device, f"values.{name}.reward.device")
            place(self.model, self.device, "reward model")
        except OSError as e:
            raise RewardError(f"reward model {path!r} for {name!r} cannot be loaded ({e}); offline? use a local path "
                              "(with safetensors weights: mvalign never unpickles pytorch_model.bin)") from e
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.name, self.cost, self.batch_size, self.max_length = name, cost, batch_size, max_length
        self.identity = (f"hf:{path}:{getattr(self.model.config, '_commit_hash', '') or ''}:{folder_fingerprint(path)}"
                         f":cost={cost}")

    def _text(self, prompt, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
            return self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        return f"{prompt_text(prompt)}\n\n{response}"

    @torch.no_grad()
    def _score(self, prompts, responses):
        out = []
        texts = [self._text(p, r) for p, r in zip(prompts, responses)]
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            out.extend(self.model(**batch).logits[:, 0].float().tolist())
        return out
