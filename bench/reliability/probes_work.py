"""Probes of finished work: resume after a lost record or a kill, moves to a huge ω, exports that could overwrite,
a changed base model, two processes at once, a full disk, a read-only run (items 1, 2, 3, 5, 9)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from safetensors.torch import load_file

from bench.reliability.harness import Workspace, judge, safe
from bench.reliability.probes import probe

TIMING = ("seconds", "created")


def _tensors(path: Path) -> dict:
    return load_file(str(path / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not any(t in k for t in TIMING)}
    return [_untimed(v) for v in obj] if isinstance(obj, list) else obj


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def _forget_helpful(ws: Workspace) -> dict:
    """Remove helpful's dpo adapter, training folder and record (as if never trained); returns its tensors."""
    before = _tensors(ws.adapter())
    shutil.rmtree(ws.adapter())
    for d in ws.run.glob("train/**/helpful"):
        if "dpo" in d.parts or d.parent.name == "train":
            shutil.rmtree(d)
    ws.sql("DELETE FROM vectors WHERE value = 'helpful' AND method = 'dpo'")
    return before


def _train(ws, *extra):
    return ws.cli("train", str(ws.config), "--method", "dpo", "--value", "helpful", *extra)


# --- resume (item 1) ------------------------------------------------------------------------------------------------
@probe("1", "ok", "store.sqlite deleted: re-run records the finished adapters")
def store_deleted(ws):
    before = _tensors(ws.adapter())
    (ws.run / "store.sqlite").unlink()
    res = ws.cli("train", str(ws.config), "--method", "dpo")
    return judge(res, ok=lambda: ws.sql("SELECT steps FROM vectors WHERE value = 'helpful'") == [(2,)],
                 lost=lambda: not _same(_tensors(ws.adapter()), before))


@probe("1", "ok", "killed after the final checkpoint, before the store write")
def row_lost(ws):
    before = _tensors(ws.adapter())
    ws.sql("DELETE FROM vectors WHERE value = 'helpful'")
    res = _train(ws)
    return judge(res, ok=lambda: ws.sql("SELECT steps FROM vectors WHERE value = 'helpful' AND method = 'dpo'") == [(2,)]
                 and not list(ws.run.rglob("*.tmp")), lost=lambda: not _same(_tensors(ws.adapter()), before))


@probe("1", "ok", "kill -9 mid-training, re-run: the same adapter as uninterrupted")
def kill_training(ws):
    before = _forget_helpful(ws)
    logs = lambda: [p for p in ws.run.glob("train/**/helpful/log.jsonl") if p.stat().st_size > 0]  # noqa: E731
    killed = ws.tree.kill_when(ws.root, lambda: bool(logs()), "train", str(ws.config), "--method", "dpo", "--value",
                               "helpful")
    if killed.code != -9:
        return f"not killed (exit {killed.code})"
    res = _train(ws)
    return safe(lambda: judge(res, ok=lambda: _same(_tensors(ws.adapter()), before) and not list(ws.run.rglob("*.tmp"))))


@probe("1", "ok", "kill -9 mid-sweep, re-run: the same front as uninterrupted")
def kill_sweep(ws):
    front = json.loads((ws.run / "front-mva.json").read_text())
    ws.sql("DELETE FROM points")
    for f in ws.run.glob("front*.json"):
        f.unlink()
    killed = ws.tree.kill_when(ws.root, lambda: ws.sql("SELECT count(*) FROM points")[0][0] >= 3, "run",
                               str(ws.config), "--method", "mva")
    if killed.code != -9:
        return f"not killed (exit {killed.code})"
    res = ws.cli("run", str(ws.config), "--method", "mva")
    return safe(lambda: judge(res, ok=lambda: _untimed(json.loads((ws.run / "front-mva.json").read_text()))
                              == _untimed(front)))


# --- a huge ω (item 2) ----------------------------------------------------------------------------------------------
def _list_sweep(ws: Workspace, points: list[dict]) -> dict:
    ws.edit_config(lambda c: c["sweep"].update(strategy="list", points=points))
    res = ws.cli("run", str(ws.config), "--method", "mva")
    rows = ws.sql("SELECT weights, responses, flag FROM points WHERE split = 'val'") if res.code == 0 else []
    return {"res": res, "points": {r[0]: (json.loads(r[1]), r[2]) for r in rows}}


@probe("2", "ok", "a visit to ω = 1e30 leaves later points and the front undamaged")
def huge_omega(ws):
    clean = ws.root / "clean"
    shutil.copytree(ws.root, clean, ignore=shutil.ignore_patterns("clean"))
    target = {"helpful": 0.5, "harmless": 1.0}
    after = _list_sweep(ws, [{"helpful": 1e30, "harmless": 0.0}, target])
    alone = _list_sweep(Workspace(clean, ws.model, ws.tree), [target])
    key = json.dumps(target, sort_keys=True)

    def right():
        front = json.loads((ws.run / "front-mva.json").read_text())
        huge_selected = any(p["pareto"] for p in front["points"] if p["weights"]["helpful"] > 1e6 and p["split"] == "val")
        return after["points"][key][0] == alone["points"][key][0] and not huge_selected
    return safe(lambda: judge(after["res"], ok=right))


# --- exports that could overwrite (item 3) --------------------------------------------------------------------------
def _export_into(ws: Workspace, out: Path) -> str:
    digest = _digest(out) if out.is_dir() else (out.read_bytes() if out.exists() else None)
    res = ws.cli("combine", "run", "--weights", "helpful=1,harmless=1", "--method", "dpo", "--out", str(out))
    after = _digest(out) if out.is_dir() else (out.read_bytes() if out.exists() else None)
    return judge(res, needle=str(out), lost=lambda: after != digest)


@probe("3", "clear error", "combine --out the base model's folder")
def out_base(ws):
    model = ws.root / "model"
    shutil.copytree(ws.model, model)
    ws.edit_config(lambda c: c["model"].update(name=str(model)))
    (ws.run / "config.yaml").write_text((ws.run / "config.yaml").read_text().replace(str(ws.model), str(model)))
    return _export_into(ws, model)


@probe("3", "clear error", "combine --out a non-empty folder")
def out_nonempty(ws):
    (ws.root / "mine").mkdir()
    (ws.root / "mine" / "notes.txt").write_text("keep me")
    return _export_into(ws, ws.root / "mine")


@probe("3", "clear error", "combine --out an existing file")
def out_file(ws):
    (ws.root / "notes.txt").write_text("keep me")
    return _export_into(ws, ws.root / "notes.txt")


@probe("3", "clear error", "combine --out the run directory")
def out_run(ws):
    return _export_into(ws, ws.run)


@probe("3", "clear error", "base weights changed in place after training")
def base_changed(ws):
    model = ws.root / "model"
    shutil.copytree(ws.model, model)
    ws.edit_config(lambda c: c["model"].update(name=str(model)))
    for f in (ws.run / "config.yaml", *ws.run.glob("base.json")):
        f.write_text(f.read_text().replace(str(ws.model), str(model)))
    weights = load_file(str(model / "model.safetensors"))
    from safetensors.torch import save_file

    key = next(k for k in weights if "q_proj" in k)
    weights[key] = weights[key] * 1.01
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    ws.sql("DELETE FROM points WHERE split = 'test'")  # work that has to be redone on the new weights
    return judge(ws.cli("run", str(ws.config), "--method", "mva"), needle="base model")


# --- processes at once, disks (items 5, 9) --------------------------------------------------------------------------
@probe("9", "ok", "two `train` processes on one value at once")
def two_trainers(ws):
    before = _forget_helpful(ws)
    procs = [ws.tree.popen(ws.root, "train", str(ws.config), "--method", "dpo", "--value", "helpful") for _ in range(2)]
    outs = [(p.communicate()[0], p.returncode) for p in procs]
    if any("Traceback" in o for o, _ in outs):
        return "traceback"
    if any(c not in (0, 1) or (c == 1 and "another process" not in o) for o, c in outs):
        return "wrongly refused"
    return "ok" if _same(_tensors(ws.adapter()), before) else "silent wrong"


def _tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def on_tmpfs(probe_fn):
    """Run the probe on a copy of its workspace on a fresh 64 MB tmpfs (unmounted after); n/a without root."""
    def run(ws: Workspace) -> str:
        disk = ws.root.parent / (ws.root.name + "-disk")
        if not _tmpfs(disk, "64m"):
            return "n/a (cannot mount tmpfs)"
        try:
            shutil.copytree(ws.root, disk / "ws", symlinks=True)
            return probe_fn(Workspace(disk / "ws", ws.model, ws.tree), ws.root)
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    return run


@probe("5", "clear error", "disk full while training")
@on_tmpfs
def disk_full(small, _):
    _forget_helpful(small)
    others = _digest(small.run / "adapters")
    subprocess.run(["dd", "if=/dev/zero", f"of={small.root / 'filler'}", "bs=1M", "count=64"], capture_output=True)
    return judge(_train(small), needle="space", lost=lambda: _digest(small.run / "adapters") != others)


@probe("5", "ok", "read-only finished run: train (nothing to do), compare/report/combine elsewhere")
@on_tmpfs
def read_only(small, writable):
    subprocess.run(["mount", "-o", "remount,ro", str(small.root.parent)], check=True)
    out = writable / "elsewhere"
    runs = [small.cli("train", str(small.config), "--method", "dpo"), small.cli("compare", "run", "--out", str(out)),
            small.cli("report", "run", "--out", str(out / "report")),
            small.cli("combine", "run", "--weights", "helpful=1,harmless=1", "--method", "dpo", "--out",
                      str(out / "merged"))]
    bad = [r for r in runs if r.code != 0]
    return judge(bad[0] if bad else runs[0], ok=lambda: not bad)


@probe("9", "ok", "diagnose RUN without --method on an mva run")
def diagnose(ws):
    res = ws.cli("diagnose", "run")
    return judge(res, ok=lambda: any((ws.run / "diagnostics").iterdir()))


@probe("9", "ok", "a run dir moved elsewhere carries on")
def moved(ws):
    new = ws.root / "moved"
    shutil.move(ws.run, new)
    ws.edit_config(lambda c: c.update(run_dir=str(new)))
    res = ws.cli("train", str(ws.config), "--method", "dpo")
    return judge(res, ok=lambda: '"steps": 2' in res.out and not (ws.root / "run").exists())
