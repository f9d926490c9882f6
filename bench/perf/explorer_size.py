"""How large a run the front explorer stays responsive for (issue 16) → bench/results/explorer.json.

    .venv/bin/python -m bench.perf.explorer_size           # medium and large synthetic runs (~3 min, nothing else running)
    .venv/bin/python -m bench.perf.explorer_size --quick   # one small run, bench/results/explorer-quick.json

A synthetic run directory per size: `methods` methods, each with a `grid`×`grid` val grid (every point scored on the
val prompts) and `test_points` selected points (on the test prompts), two values, every response distinct (the worst
case for the page's string table: real greedy runs repeat many responses), written through the real store and
`front.Front.build`. Measured: seconds of `write_explorer`, the page's size, and in headless Chromium (Debian's, as
the tests drive it): seconds from navigation to the plot drawn, from a point's click to its response table shown,
and for re-sorting the table and switching to the paired view; the JS heap after loading.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "runs" / "bench-explorer"
SIZES = {
    "medium": {"methods": 4, "grid": 11, "test_points": 12, "val_prompts": 64, "test_prompts": 128, "words": 60},
    "large": {"methods": 8, "grid": 21, "test_points": 20, "val_prompts": 64, "test_prompts": 128, "words": 60},
    "quick": {"methods": 2, "grid": 3, "test_points": 3, "val_prompts": 8, "test_prompts": 8, "words": 10},
}
WORDS = ["the", "a", "model", "answer", "helpful", "harmless", "cannot", "sorry", "help", "you", "here", "is", "how",
         "to", "safely", "please", "note", "risk"]


def synthetic_run(folder: Path, s: dict, seed: int = 0) -> Path:
    from mvalign.front import Front, PerSplit
    from mvalign.pareto import bootstrap_ci
    from mvalign.rundir import RunDir
    from mvalign.store import PointRecord

    rng, prng = np.random.default_rng(seed), random.Random(seed)
    shutil.rmtree(folder, ignore_errors=True)
    run = RunDir(folder)
    store = run.store()
    values = ["helpful", "harmless"]
    n = {"val": s["val_prompts"], "test": s["test_prompts"]}
    prompts = {sp: [f"{sp} prompt {i}: " + " ".join(prng.choices(WORDS, k=12)) for i in range(k)] for sp, k in n.items()}

    def record(method, weights, split, shift):
        scores = {v: (rng.normal(shift[j], 1.0, n[split])).tolist() for j, v in enumerate(values)}
        rec = PointRecord(method, weights, split, f"{split}-key", {v: float(np.mean(x)) for v, x in scores.items()},
                          {v: list(bootstrap_ci(np.asarray(x), 200, 0)) for v, x in scores.items()}, n[split], 0.0, 0.0,
                          {}, [" ".join(prng.choices(WORDS, k=s["words"])) for _ in range(n[split])], scores=scores)
        store.put_point(rec)
        return rec

    base = {sp: record("base", {v: 0.0 for v in values}, sp, (0.0, 0.0)) for sp in n}
    grid = np.linspace(-0.5, 2.0, s["grid"])
    for m in range(s["methods"]):
        method = f"method{m}"
        val = [record(method, {"helpful": float(a), "harmless": float(b)}, "val", (0.3 * a - 0.1 * b, 0.3 * b - 0.1 * a))
               for a in grid for b in grid]
        test = [record(method, dict(p.label), "test", (p.rewards["helpful"], p.rewards["harmless"]))
                for p in val[:: max(1, len(val) // s["test_points"])][: s["test_points"]]]
        front = Front.build(values, method, val, test, base["val"], base["test"], store_method=method)
        front.prompts = PerSplit(prompts["val"], prompts["test"])
        run.write_front(front, method, primary=m == 0)
    return folder


def browser_timings(page_path: Path) -> dict:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        t = time.perf_counter()
        page.goto(page_path.as_uri(), timeout=300_000)
        page.wait_for_selector("#status[data-drawn]", timeout=300_000)
        load = time.perf_counter() - t
        drawn = page.locator(".scatterlayer path.point").count()
        heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : null")
        pid = page.evaluate("explorer.data.runs[0].methods.at(-1).points.find(p => p.split === 'val').id")
        t = time.perf_counter()
        page.evaluate(f"explorer.showPoint({json.dumps(pid)})")
        page.wait_for_selector("#responses tr[data-index]")
        click = time.perf_counter() - t
        t = time.perf_counter()
        page.select_option("#sort", "helpful:desc")
        sort = time.perf_counter() - t
        t = time.perf_counter()
        page.select_option("#view", "change")
        change = time.perf_counter() - t
        browser.close()
    return {"load_s": round(load, 3), "points_drawn": drawn, "js_heap_mb": heap and round(heap / 2**20, 1),
            "show_point_s": round(click, 3), "sort_s": round(sort, 3), "paired_view_s": round(change, 3),
            "page_errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from mvalign.explorer import write_explorer
    from mvalign.rundir import RunDir

    sizes = ["quick"] if args.quick else ["medium", "large"]
    out = {"machine": "2 CPU cores, no GPU; Debian chromium headless", "cells": {}}
    for name in sizes:
        s = SIZES[name]
        folder = synthetic_run(WORK / name, s)
        t = time.perf_counter()
        page = write_explorer([RunDir(folder)])
        write_s = time.perf_counter() - t
        points = s["methods"] * (s["grid"] ** 2 + s["test_points"])
        responses = s["methods"] * (s["grid"] ** 2 * s["val_prompts"] + s["test_points"] * s["test_prompts"])
        cell = {"settings": s, "points": points, "responses": responses, "write_s": round(write_s, 2),
                "page_mb": round(page.stat().st_size / 2**20, 1), **browser_timings(page)}
        out["cells"][name] = cell
        print(json.dumps({name: cell}), flush=True)
    dest = ROOT / "bench" / "results" / ("explorer-quick.json" if args.quick else "explorer.json")
    dest.write_text(json.dumps(out, indent=1))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
