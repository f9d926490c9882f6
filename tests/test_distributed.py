"""Several processes, one training: `torchrun` / `accelerate launch --multi_gpu --num_processes 2` of `mvalign train`
on the tiny model, gloo on this machine's CPUs. Real processes, a real process group; nothing is mocked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common import write_builtin_config
from mvalign.store import RunStore

DPO = {"max_steps": 3, "batch_size": 2, "save_every": 2, "max_length": 96, "max_prompt_length": 64, "eval_pairs": 4}
TOLERANCE = 1e-6
"""Max |Δ| between the 2-process and the single-process adapters (measured: 0.0 on this machine, gloo, fp32)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(config: Path, cache: Path, processes: int, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MVALIGN_CACHE_DIR": str(cache), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MVALIGN_FAULT", None)
    if fault:
        env["MVALIGN_FAULT"] = fault
    cli = ["-m", "mvalign.cli", "--verbose", "train", str(config), "--method", "mva"]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:  # accelerate's launcher (torchrun underneath); on CPUs --multi_gpu is what starts N processes
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), *cli]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=config.parent)


def adapters(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {v: load_file(str(run / "adapters" / "mva" / v / "adapter_model.safetensors")) for v in ("helpful", "harmless")}


def log_rows(run: Path) -> list[dict]:
    rows = []
    for group, v in (("dpo", "helpful"), ("mva", "harmless")):
        for line in (run / "train" / group / v / "log.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows.append({k: row[k] for k in row if k not in ("seconds", "lr")})
    return rows


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model_dir) -> Path:
    """The reference: one process, batch 2 with 2 accumulation steps (global batch 4)."""
    folder = tmp_path_factory.mktemp("single")
    config = write_builtin_config(folder, tiny_model_dir, 8, dpo={**DPO, "grad_accum": 2})
    done = train(config, folder / "cache", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def two_process_config(folder: Path, tiny_model_dir: Path) -> Path:
    """Two processes with batch 2 and no accumulation: the same global batch of 4, the same micro-batches."""
    return write_builtin_config(folder, tiny_model_dir, 8, dpo={**DPO, "grad_accum": 1})


def test_two_processes_train_the_single_process_adapters(single, tmp_path, tiny_model_dir):
    """DPO (helpful) then MVA with its HSIC penalty (harmless) in 2 processes: the adapters equal the single-process
    ones within TOLERANCE, the log has one row per step with the same losses and token counts (every process's
    micro-batches), the store one row per adapter, the reference log-probs are computed once (by the main process;
    the other reads its cache), and only the main process reports."""
    config = two_process_config(tmp_path, tiny_model_dir)
    done = train(config, tmp_path / "cache", 2)
    assert done.returncode == 0, done.stderr[-4000:]
    ref, got = adapters(single / "run"), adapters(tmp_path / "run")
    for v in ref:
        assert ref[v].keys() == got[v].keys()
        diff = max((ref[v][k] - got[v][k]).abs().max().item() for k in ref[v])
        assert diff <= TOLERANCE, (v, diff)
        assert max(t.abs().max().item() for t in got[v].values()) > 0
    want, have = log_rows(single / "run"), log_rows(tmp_path / "run")
    assert [r["step"] for r in have] == [1, 2, 3, 1, 2, 3]
    for a, b in zip(want, have):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7) for k in a), (a, b)
    store = RunStore(tmp_path / "run")
    assert sorted((r.group, r.name) for r in store.vectors()) == [("dpo", "helpful"), ("mva", "harmless"),
                                                                     ("mva", "helpful")]
    computed = done.stderr.count("computing reference log-probs")  # logged by whichever process computes
    assert computed == len(list((tmp_path / "cache" / "ref_logps").iterdir())) == 4  # train + held-out, 2 values
    assert len([line for line in done.stdout.splitlines() if line.startswith("{")]) == 2
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_a_killed_multi_process_training_resumes_to_the_same_adapters(single, tmp_path, tiny_model_dir):
    """Both processes die (SIGKILL) after step 2 of the first adapter (a checkpoint exists); the relaunch resumes
    from it and ends with the uninterrupted single-process adapters."""
    config = two_process_config(tmp_path, tiny_model_dir)
    killed = train(config, tmp_path / "cache", 2, fault="step@2")
    assert killed.returncode != 0
    ckpt = tmp_path / "run" / "train" / "dpo" / "helpful" / "checkpoint" / "state.json"
    assert json.loads(ckpt.read_text())["step"] == 2 and not (tmp_path / "run" / "adapters" / "dpo" / "helpful").exists()
    done = train(config, tmp_path / "cache", 2)
    assert done.returncode == 0, done.stderr[-4000:]
    ref, got = adapters(single / "run"), adapters(tmp_path / "run")
    assert all((ref[v][k] - got[v][k]).abs().max().item() <= TOLERANCE for v in ref for k in ref[v])
    assert [r["step"] for r in log_rows(tmp_path / "run")] == [1, 2, 3, 1, 2, 3]
