"""What every reliability probe needs: a trained workspace per source tree, the CLI of that tree as a real process,
and one judgement of what came out.

Outcomes: `ok` (worked and the result is right), `clear error` (refused: no traceback, exit 1 or 2, the message
names the file / field / value at fault), `unclear error` (refused without naming it), `wrongly refused` (an error
where it should have worked), `traceback`, `silent wrong`
(exit 0 with a wrong result, or should have been refused), `data lost` (finished work or a user's file damaged).
Each probe states the outcome it should have; a tree passes a probe when it has that outcome.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from mvalign.testing import make_llama, make_tokenizer, write_builtin_config

ROOT = Path(__file__).resolve().parents[2]

DPO = {"max_steps": 2, "save_every": 1, "batch_size": 4, "max_length": 96, "max_prompt_length": 64, "eval_pairs": 4}
SWEEP = {"strategy": "grid", "grid": [0.5, 2.0], "val_prompts": 3, "test_prompts": 3, "max_new_tokens": 6,
         "bootstrap": 100}
CODE = "from mvalign.cli import app; app(prog_name='mvalign')"  # both trees have `app`


@dataclass
class Result:
    code: int
    out: str


class Tree:
    """One source tree's CLI, run with that tree's `src` first on PYTHONPATH (same interpreter and packages)."""

    def __init__(self, name: str, src: Path) -> None:
        self.name, self.src = name, src

    def env(self, ws: Path, extra: dict | None = None) -> dict:
        return {**os.environ, "PYTHONPATH": str(self.src), "MVALIGN_CACHE_DIR": str(ws / "cache"),
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(extra or {})}

    def popen(self, ws: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", CODE, *args], cwd=ws, env=self.env(ws), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def cli(self, ws: Path, *args: str, timeout: int = 600) -> Result:
        try:
            done = subprocess.run([sys.executable, "-c", CODE, *args], cwd=ws, env=self.env(ws), text=True,
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Result(-1, f"Traceback: timed out after {timeout} s (stuck)")
        return Result(done.returncode, done.stdout + done.stderr)

    def kill_when(self, ws: Path, ready: Callable[[], bool], *args: str, timeout: int = 300) -> Result:
        """Start the CLI, SIGKILL it as soon as `ready()` holds (polled), return how it ended."""
        proc = self.popen(ws, *args)
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < timeout:
            if ready():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        out, _ = proc.communicate()
        return Result(proc.returncode, out)


@dataclass
class Workspace:
    """A copy of the tree's trained template: config.yaml, run/ (dpo and mva vectors, reward heads, mva front),
    cache/; the tiny model lives outside (shared, read-only)."""

    root: Path
    model: Path
    tree: Tree

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def cli(self, *args: str, **kw) -> Result:
        return self.tree.cli(self.root, *args, **kw)

    def edit_config(self, change: Callable[[dict], None]) -> None:
        raw = yaml.safe_load(self.config.read_text())
        change(raw)
        self.config.write_text(yaml.safe_dump(raw))

    def adapter(self, value: str = "helpful", group: str = "dpo") -> Path:
        """adapters/<group>/<value>, or the older layout adapters/<value> (found, not assumed)."""
        for path in (self.run / "adapters" / group / value, self.run / "adapters" / value):
            if (path / "adapter_model.safetensors").is_file():
                return path
        raise FileNotFoundError(f"no adapter for {value} in {self.run}")

    def sql(self, query: str) -> list:
        with sqlite3.connect(self.run / "store.sqlite") as con:
            return con.execute(query).fetchall()


def build_model(folder: Path) -> Path:
    tok = make_tokenizer()
    out = folder / "tiny-llama"
    make_llama(len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def template(tree: Tree, folder: Path, model: Path) -> Path:
    """Train once per tree: both values' dpo vectors, mva's, the reward heads, mva's evaluated front."""
    folder.mkdir(parents=True)
    path = write_builtin_config(folder, model, 8, dpo=DPO, sweep=SWEEP)
    if not (tree.src / "mvalign" / "audit.py").is_file():  # trees from before the `audit` section (issue 32)
        raw = yaml.safe_load(path.read_text())
        raw.pop("audit", None)
        path.write_text(yaml.safe_dump(raw))
    for args in (("reward", "train", str(path)), ("train", str(path), "--method", "dpo"),
                 ("run", str(path), "--method", "mva")):
        done = tree.cli(folder, *args)
        if done.code != 0:
            raise SystemExit(f"{tree.name}: building the workspace failed at {args}:\n{done.out[-3000:]}")
    return folder


def fresh(tree: Tree, tmpl: Path, model: Path, dest: Path) -> Workspace:
    """A copy of the template that looks made where it is: the absolute paths the run recorded (config.yaml's
    run_dir, the store's adapter folders) are rewritten, so trees that refuse a moved run dir can be probed too."""
    shutil.copytree(tmpl, dest, symlinks=True)
    for f in (dest / "config.yaml", dest / "run" / "config.yaml"):
        f.write_text(f.read_text().replace(str(tmpl), str(dest)))
    with sqlite3.connect(dest / "run" / "store.sqlite") as con:
        con.execute("UPDATE vectors SET adapter_dir = replace(adapter_dir, ?, ?)", (str(tmpl), str(dest)))
    return Workspace(dest, model, tree)


LAST_OUTPUT: list[str] = [""]
"""The end of the output of the last judged command (kept in the results file, to read what happened)."""


def judge(res: Result, *, needle: str | None = None, ok: Callable[[], bool] | None = None,
          lost: Callable[[], bool] | None = None) -> str:
    """`needle`: what a clear refusal must name (the probe expects a refusal); `ok`: the probe expects success and
    this checks the result; `lost`: True when finished work or a user's file was damaged."""
    LAST_OUTPUT[:] = [res.out[-600:]]
    if lost is not None and lost():
        return "data lost"
    if "Traceback" in res.out or res.code < 0 or res.code > 2:
        return "traceback"
    if res.code == 2 and ("No such option" in res.out or "No such command" in res.out or "Got unexpected" in res.out):
        return "n/a (this tree's CLI has no such command or option)"
    if res.code == 0:
        return "ok" if ok is not None and ok() else "silent wrong"
    if ok is not None:  # refused what should have worked
        return "wrongly refused"
    return "clear error" if needle is None or needle in res.out else "unclear error"


def safe(fn: Callable[[], str]) -> str:
    """A probe whose own checks crash (e.g. a result file missing) did not produce a right result."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - reported as the outcome, never hidden
        return f"silent wrong ({type(e).__name__}: {str(e)[:80]})"
