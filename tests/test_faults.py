"""Fault injection (issue 13): a run killed with SIGKILL at every phase boundary, then re-run, ends bit-identical to
an uninterrupted run with no temporaries left; a full disk and a read-only run dir give one line, lose nothing.

Every run here is a real `mvalign` process (killed via MVALIGN_FAULT, see `mvalign.faults`), all with the same
environment, so the uninterrupted reference and the resumed run compute with the same threads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from common import write_builtin_config
from mvalign.store import AdapterRef, RunStore

DPO = {"max_steps": 3, "save_every": 2, "batch_size": 4, "max_length": 96, "max_prompt_length": 64, "eval_pairs": 4}
SWEEP = {"strategy": "grid", "grid": [0.5, 2.0], "val_prompts": 3, "test_prompts": 3, "max_new_tokens": 6,
         "bootstrap": 100}
TIMING = ("seconds", "created")


def mvalign(*args: str, cwd: Path, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process with its own cache (beside the run) and one thread."""
    env = {**os.environ, "MVALIGN_CACHE_DIR": str(cwd / "cache"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MVALIGN_FAULT", None)
    if fault:
        env["MVALIGN_FAULT"] = fault
    code = "import sys; from mvalign.cli import main; sys.argv[0] = 'mvalign'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".copy")]


def untimed(obj):
    """A front / record without wall-clock numbers (which differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def trained_state(run: Path, group: str = "dpo", value: str = "helpful"):
    rec = RunStore(run).get_vector(AdapterRef(group, value))
    tensors = load_file(str(run / "adapters" / group / value / "adapter_model.safetensors"))
    log = [json.loads(line) for line in (run / "train" / group / value / "log.jsonl").read_text().splitlines()
           if line.strip()]
    return rec, tensors, log


@pytest.fixture(scope="module")
def training_reference(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("uninterrupted")
    path = write_builtin_config(folder, tiny_model_dir, 8, dpo=DPO)
    done = mvalign("train", str(path), "--value", "helpful", cwd=folder)
    assert done.returncode == 0, done.stderr
    return trained_state(folder / "run")


@pytest.mark.parametrize("fault", ["reference", "step@1", "step@2", "trained", "adapter", "vector"])
def test_training_killed_at_each_phase_resumes_bit_identical(tmp_path, tiny_model_dir, training_reference, fault):
    """step@1: killed before any checkpoint (save_every 2), the step is redone; step@2: killed right after the
    checkpoint; trained / adapter / vector: killed before the adapter is saved / before / after its store record."""
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, dpo=DPO)
    killed = mvalign("train", str(path), "--value", "helpful", cwd=tmp_path, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = mvalign("train", str(path), "--value", "helpful", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    ref_rec, ref_tensors, ref_log = training_reference
    rec, tensors, log = trained_state(tmp_path / "run")
    assert tensors.keys() == ref_tensors.keys()
    assert all(tensors[k].equal(ref_tensors[k]) for k in tensors), "resumed adapter differs from the uninterrupted one"
    assert untimed(rec.metrics) == untimed(ref_rec.metrics) and rec.steps == ref_rec.steps == 3
    assert rec.seconds > 0 and rec.train_pairs == ref_rec.train_pairs
    # every step logged; a step redone after the kill is logged twice with identical numbers
    by_step = {}
    for row in log:
        by_step.setdefault(row["step"], []).append(untimed(row))
    assert sorted(by_step) == [1, 2, 3] and all(r == untimed(ref_log[s - 1]) for s, rows in by_step.items() for r in rows)
    assert not leftovers(tmp_path / "run") and not leftovers(tmp_path / "cache")


@pytest.fixture(scope="module")
def evaluable(tmp_path_factory, tiny_model_dir):
    """A run dir with both values' vectors and reward heads trained (copied into each test)."""
    folder = tmp_path_factory.mktemp("evaluable")
    path = write_builtin_config(folder, tiny_model_dir, 8, sweep=SWEEP)
    for args in (("reward", "train", str(path)), ("train", str(path), "--method", "mva")):
        done = mvalign(*args, cwd=folder)
        assert done.returncode == 0, done.stderr
    reference = folder / "reference"
    shutil.copytree(folder, reference, ignore=shutil.ignore_patterns("reference"))
    done = mvalign("run", "config.yaml", "--method", "mva", cwd=reference)
    assert done.returncode == 0, done.stderr
    return folder, reference


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("reference"))
    return dst


@pytest.mark.parametrize("fault", ["point@2", "point@5", "front"])
def test_evaluation_killed_mid_sweep_resumes_to_the_same_front(tmp_path, evaluable, fault):
    """point@2: two of four val points stored; point@5: val done, the test split begun; front: written, report not."""
    folder, reference = evaluable
    work = _copy(folder, tmp_path / "work")
    killed = mvalign("run", "config.yaml", "--method", "mva", cwd=work, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = mvalign("run", "config.yaml", "--method", "mva", cwd=work)
    assert again.returncode == 0, again.stderr
    front = json.loads((work / "run" / "front-mva.json").read_text())
    expected = json.loads((reference / "run" / "front-mva.json").read_text())
    assert untimed(front) == untimed(expected)
    assert len(RunStore(work / "run").points("mva")) == len(RunStore(reference / "run").points("mva"))
    report = (work / "run" / "report.md").read_text().replace(str(work), "RUN")
    assert report == (reference / "run" / "report.md").read_text().replace(str(reference), "RUN")
    assert not leftovers(work / "run")


def test_a_second_trainer_of_the_same_vector_is_told_who_holds_it(tmp_path, tiny_model_dir):
    """Two `train` processes on one value: the second stops at once with one line naming the lock; the first is
    unharmed. (The holder here is a process holding the same lock file, as a running trainer does.)"""
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, dpo=DPO)
    lock = tmp_path / "run" / ".locks" / "dpo-helpful.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from filelock import FileLock; "
                               f"l = FileLock({str(lock)!r}); l.acquire(); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        blocked = mvalign("train", str(path), "--value", "helpful", cwd=tmp_path)
        errors = [line for line in blocked.stderr.splitlines() if line.startswith("error: ")]
        assert blocked.returncode == 1 and len(errors) == 1 and "Traceback" not in blocked.stderr, blocked.stderr
        assert "another process is training dpo/helpful" in errors[0] and str(lock) in errors[0]
        assert not (tmp_path / "run" / "adapters").exists()
    finally:
        holder.communicate("")
    done = mvalign("train", str(path), "--value", "helpful", cwd=tmp_path)  # the lock is free again
    assert done.returncode == 0, done.stderr


def test_a_changed_base_model_is_detected(tmp_path, tiny_model_dir):
    """`combine --out` into the model's own folder (or any replacement of the checkpoint) is caught by the base
    weights' fingerprint: training and evaluation refuse with one line instead of reusing stale vectors."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    path = write_builtin_config(tmp_path, model, 8, dpo=DPO)
    assert mvalign("train", str(path), "--value", "helpful", cwd=tmp_path).returncode == 0
    assert json.loads((tmp_path / "run" / "base.json").read_text())["fingerprint"]
    from transformers import AutoModelForCausalLM

    changed = AutoModelForCausalLM.from_pretrained(model)
    with __import__("torch").no_grad():
        changed.model.layers[0].self_attn.q_proj.weight.mul_(1.01)
    changed.save_pretrained(model)
    refused = mvalign("train", str(path), "--value", "harmless", cwd=tmp_path)
    assert refused.returncode == 1 and "the base model's weights changed since this run was made" in refused.stderr
    assert "Traceback" not in refused.stderr


def mount_tmpfs(folder: Path, size: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not root'}); "
                    "the simulated-ENOSPC test covers the messages")
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A real, tiny filesystem (tmpfs): filling it gives the kernel's own ENOSPC; remounting it gives EROFS."""
    folder = mount_tmpfs(tmp_path / "disk", "64m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_mid_training_gives_one_line_and_loses_nothing(small_disk, tiny_model_dir):
    path = write_builtin_config(small_disk, tiny_model_dir, 8, dpo={**DPO, "save_every": 1})
    killed = mvalign("train", str(path), "--value", "helpful", cwd=small_disk, fault="step@2")
    assert killed.returncode == -signal.SIGKILL
    ckpt = small_disk / "run" / "train" / "dpo" / "helpful" / "checkpoint"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)  # fills it up
    full = mvalign("train", str(path), "--value", "helpful", cwd=small_disk)
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert full.returncode == 1 and len(errors) == 1 and "Traceback" not in full.stderr, full.stderr
    assert "no space left on device" in errors[0] and "free space" in errors[0]
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # the last good checkpoint is untouched
    filler.unlink()
    again = mvalign("train", str(path), "--value", "helpful", cwd=small_disk)
    assert again.returncode == 0, again.stderr
    assert RunStore(small_disk / "run").get_vector(AdapterRef("dpo", "helpful")).steps == 3
    assert not leftovers(small_disk / "run")


def test_read_only_commands_work_on_a_read_only_finished_run(small_disk, evaluable):
    folder, reference = evaluable
    work = _copy(reference, small_disk / "work")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for command in ("report", "compare"):  # by default these write into the run: one line says why they cannot
        refused = mvalign(command, "run", cwd=work)
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert refused.returncode == 1 and len(errors) == 1 and "read-only file system" in errors[0], refused.stderr
    elsewhere = small_disk.parent / "elsewhere"
    for args in (("report", "run", "--out", str(elsewhere / "report")), ("compare", "run", "--out", str(elsewhere)),
                 ("combine", "run", "--weights", "helpful=1,harmless=0.5", "--out", str(elsewhere / "merged"))):
        done = mvalign(*args, cwd=work)
        assert done.returncode == 0, done.stderr
    sections = [(folder / "report.md").read_text().split("\n## ", 1)[1] for folder in (elsewhere / "report", work / "run")]
    assert sections[0] == sections[1]  # the same per-method tables (the header lists settings only after `run`)
    assert (elsewhere / "compare.json").is_file() and (elsewhere / "merged" / "model.safetensors").is_file()
    trained = mvalign("train", "config.yaml", "--method", "mva", cwd=work)  # nothing left to do: no write needed
    assert trained.returncode == 0, trained.stderr


def test_simulated_enospc_at_each_write_names_the_file(tmp_path, tiny_model_dir, monkeypatch):
    """Where no small filesystem can be mounted: ENOSPC raised at the write calls themselves."""
    import errno

    from typer.testing import CliRunner

    import mvalign.train.trainer as trainer
    from mvalign.cli import app

    path = write_builtin_config(tmp_path, tiny_model_dir, 8, dpo=DPO)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer, "save_file", full)
    result = CliRunner().invoke(app, ["train", str(path), "--value", "helpful"])
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "checkpoint.tmp: cannot write the step-2 checkpoint (no space left on device)" in errors[0]
    assert not leftovers(tmp_path / "run")
    monkeypatch.undo()
    assert CliRunner().invoke(app, ["train", str(path), "--value", "helpful"]).exit_code == 0
    rec = RunStore(tmp_path / "run").get_vector(AdapterRef("dpo", "helpful"))
    assert rec.steps == 3


def test_a_run_made_by_another_version_says_so(tmp_path, tiny_model_dir):
    """A run's config.yaml with a field this version does not know: the error names the field and, when versions.json
    records another mvalign version, that version (the likely cause) and what to do."""
    import yaml

    from mvalign.config import ConfigError
    from mvalign.rundir import RunDir, package_versions

    cfg = yaml.safe_load(write_builtin_config(tmp_path, tiny_model_dir, 8).read_text())
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "sweep": {"retired_option": 1}}))
    ours = package_versions()["mvalign"]
    (run / "versions.json").write_text(json.dumps({"mvalign": ours}))
    with pytest.raises(ConfigError, match="sweep.retired_option") as same:
        RunDir(run).load_config()
    assert "made by" not in str(same.value)
    (run / "versions.json").write_text(json.dumps({"mvalign": "0.0.1"}))
    with pytest.raises(ConfigError, match=rf"sweep.retired_option(.|\n)*made by mvalign 0.0.1 .* this is mvalign {ours}"):
        RunDir(run).load_config()
