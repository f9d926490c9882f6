"""The front explorer (mvalign.explorer) on a tiny two-method run, checked against the run's SQLite store read
directly, and driven in a real headless Chromium (Debian's `chromium`, via Playwright): loads from file:// with no
console error, draws every point, shows a clicked point's responses beside the base model's, and its paired numbers
equal a direct computation from the store."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from common import drawn, open_page, write_builtin_config
from mvalign.cli import app
from mvalign.config import ConfigError, load_config
from mvalign.explorer import explorer_data, serve, write_explorer
from mvalign.pipeline import run_pipeline
from mvalign.rundir import RunDir
from mvalign.stats import paired_difference


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir) -> RunDir:
    """mva + dpo on the tiny Llama, trained hard enough (lr 0.05) that combinations answer differently."""
    folder = tmp_path_factory.mktemp("explorer")
    sweep = {"grid": [0.5, 2.0], "val_prompts": 24, "test_prompts": 5, "max_new_tokens": 6, "bootstrap": 100}
    path = write_builtin_config(folder, tiny_model_dir, 8, sweep=sweep, cache_dir=str(folder / "cache"),
                                split={"train": 0.6, "val": 0.3, "test": 0.1},  # > 20 val prompts: two pages
                                dpo={"max_steps": 3, "lr": 0.05, "batch_size": 4, "max_length": 96,
                                     "max_prompt_length": 64, "eval_pairs": 4})
    cfg = load_config(path)
    cfg.run_dir = str(folder / "run")
    run_pipeline(cfg, ("mva", "dpo"), progress=False)
    return RunDir(cfg.run_dir)


def stored(run: RunDir) -> dict[tuple[str, str, str, str], dict]:
    """Every point row of store.sqlite, read with plain sqlite3: (method, weights json, split, settings key) -> row."""
    con = sqlite3.connect(run.store_path)
    con.row_factory = sqlite3.Row
    rows = {(r["method"], r["weights"], r["split"], r["settings_key"]): dict(r) for r in con.execute("SELECT * FROM points")}
    con.close()
    return rows


def row_of(rows, method: str, weights: dict, split: str, key: str) -> dict:
    wkey = json.dumps({k: round(float(v), 10) for k, v in weights.items()}, sort_keys=True)
    return rows[(method, wkey, split, key)]


def fronts(run: RunDir) -> dict[str, dict]:
    return {m: json.loads(p.read_text()) for m, p in run.front_files().items()}


def test_payload_matches_the_store_read_directly(run):
    data = explorer_data([run])
    assert (run.root / "explorer.html").is_file()  # written by the pipeline
    assert "explorer.html" in run.report_path.read_text()  # and linked from the report
    strings, r = data["strings"], data["runs"][0]
    rows = stored(run)
    fr = fronts(run)
    assert [m["name"] for m in r["methods"]] == sorted(fr) == ["dpo", "mva"]
    for m in r["methods"]:
        for split, suffix in (("test", ""), ("val", "_val")):
            base = fr[m["name"]]["base"]
            row = row_of(rows, "base", {"helpful": 0.0, "harmless": 0.0}, split, base[f"settings_key{suffix}"])
            assert [strings[i] for i in m["base"][split]["responses"]] == json.loads(row["responses"])
            assert [strings[i] for i in m["prompts"][split]] == fr[m["name"]]["prompts"][split]
            assert len(m["prompts"][split]) == len(json.loads(row["responses"]))
    n_points = 0
    for m in r["methods"]:
        front = fr[m["name"]]
        assert len(m["points"]) == len(front["points"])
        for p, fp in zip(m["points"], front["points"]):
            row = row_of(rows, front["store_method"], fp["weights"], fp["split"], fp["settings_key"])
            assert [strings[i] for i in p["responses"]] == json.loads(row["responses"])
            scores = json.loads(row["scores"])
            base_row = row_of(rows, "base", {"helpful": 0.0, "harmless": 0.0}, fp["split"],
                              front["base"]["settings_key" + ("" if fp["split"] == "test" else "_val")])
            base_scores = json.loads(base_row["scores"])
            for v in ("helpful", "harmless"):
                direct = float(np.mean(np.subtract(scores[v], base_scores[v])))
                assert p["vs_base"][v]["mean"] == pytest.approx(direct, abs=1e-12)
                assert p["rewards"][v] == pytest.approx(np.mean(scores[v]), abs=1e-9)
            n_points += 1
    assert n_points == sum(len(f["points"]) for f in fr.values())
    # the training made combinations differ from the base: otherwise the response checks above prove little
    assert any(p["responses"] != m["base"][p["split"]]["responses"] for m in r["methods"] for p in m["points"])


def test_methods_evaluated_on_other_prompts_keep_their_own_base_and_prompts(run, tmp_path):
    """A run whose dpo front was re-evaluated on fewer val prompts: its points pair with ITS base, not mva's."""
    from mvalign.evaluate import evaluate_method

    copy = RunDir(shutil.copytree(run.root, tmp_path / "run"))
    cfg = copy.load_config()
    cfg.sweep.val_prompts = 20
    evaluate_method(cfg, "dpo", progress=False, primary=False)
    methods = {m["name"]: m for m in explorer_data([copy])["runs"][0]["methods"]}
    assert len(methods["dpo"]["prompts"]["val"]) == 20 and len(methods["mva"]["prompts"]["val"]) == 24
    for p in methods["dpo"]["points"]:
        if p["split"] == "val":
            base = methods["dpo"]["base"]["val"]["scores"]
            assert len(p["scores"]["helpful"]) == len(base["helpful"]) == 20
            direct = np.mean(np.subtract(p["scores"]["helpful"], base["helpful"]))
            assert p["vs_base"]["helpful"]["mean"] == pytest.approx(direct, abs=1e-12)


def test_view_cli_bad_input_and_several_runs(run, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["view", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no such run directory" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["view", str(empty)]).exit_code == 1
    with pytest.raises(ConfigError, match="no front"):
        write_explorer([RunDir(empty)])
    copy = tmp_path / "seed1"
    shutil.copytree(run.root, copy)
    (copy / "explorer.html").unlink()
    out = tmp_path / "both.html"
    ok = runner.invoke(app, ["view", str(run.root), str(copy), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    html = out.read_text()
    assert "Plotly" in html and not re.search(r"<script[^>]*\bsrc=|<link[^>]*stylesheet", html)  # nothing fetched
    payload = html.split('<script type="application/json" id="payload">')[1].split("</script>")[0]
    assert [r["name"] for r in json.loads(payload)["runs"]] == [run.root.name, "seed1"]


# --- in a real browser ----------------------------------------------------------------------------------------------


def test_page_draws_every_point_and_shows_responses(run, browser, tmp_path):
    fr = fronts(run)
    usable = [(m, p) for m, f in fr.items() for p in f["points"] if not p.get("flag")]
    page, errors = open_page(browser, (run.root / "explorer.html").as_uri())
    assert drawn(page) == len(usable) + 2  # + the base model on val and on test
    page.uncheck("#show-val")
    assert drawn(page) == sum(p["split"] == "test" for _, p in usable) + 1
    page.check("#show-val")

    # a real click on a drawn test marker
    box = page.locator(".scatterlayer .trace").nth(1).locator("path.point").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#responses tr[data-index]")
    point_id = page.evaluate("explorer.state.point")
    method, i = point_id.split(":")
    fp = fr[method]["points"][int(i)]
    rows = stored(run)
    row = row_of(rows, fr[method]["store_method"], fp["weights"], fp["split"], fp["settings_key"])
    suffix = "" if fp["split"] == "test" else "_val"
    base_row = row_of(rows, "base", {"helpful": 0.0, "harmless": 0.0}, fp["split"], fr[method]["base"]["settings_key" + suffix])
    shown = page.locator("#responses tr[data-index]")
    n = min(20, len(json.loads(row["responses"])))
    assert shown.count() == n
    assert [shown.nth(k).locator("td.point-response").inner_text() for k in range(n)] == json.loads(row["responses"])[:n]
    assert [shown.nth(k).locator("td.base-response").inner_text() for k in range(n)] == json.loads(base_row["responses"])[:n]
    assert page.locator("#responses td.prompt").first.inner_text() == fr[method]["prompts"][fp["split"]][0]

    # the paired numbers: Δ mean and its interval, computed here from the store's per-prompt scores
    scores, base_scores = json.loads(row["scores"]), json.loads(base_row["scores"])
    for v in ("helpful", "harmless"):
        cell = page.locator(f'#paired td.delta[data-value="{v}"]')
        diff = np.subtract(scores[v], base_scores[v])
        assert float(cell.get_attribute("data-mean")) == pytest.approx(diff.mean(), abs=1e-12)
        ref = paired_difference(scores[v], base_scores[v], n_boot=1000, seed=0)
        assert cell.inner_text() == f"{diff.mean():+.4f} [{ref['ci95'][0]:+.4f}, {ref['ci95'][1]:+.4f}]"
    page.screenshot(path=tmp_path / "explorer-point.png", full_page=True)
    assert (tmp_path / "explorer-point.png").stat().st_size > 10_000
    assert errors == []


def test_paired_view_sorting_filtering_paging_and_serving(run, browser, tmp_path):
    page, errors = open_page(browser, (run.root / "explorer.html").as_uri())
    data = page.evaluate("explorer.data")
    with_change = [p for m in data["runs"][0]["methods"] for p in m["points"] if p["vs_base"] and not p["flag"]]
    page.select_option("#view", "change")
    assert drawn(page) == len(with_change) + 2
    assert page.locator(".errorbars path").count() > 0  # the paired intervals are drawn

    val_point = next(p for p in with_change if p["split"] == "val")
    page.evaluate(f"explorer.showPoint({json.dumps(val_point['id'])})")
    assert "rows 1–20 of 24" in page.inner_text("#pager")
    page.click("#next")
    assert "rows 21–24 of 24" in page.inner_text("#pager")
    page.select_option("#sort", "helpful:desc")
    deltas = [float(t.split("Δ ")[1].rstrip(")")) for t in page.locator("#responses tr[data-index] td:nth-child(6) span")
              .all_inner_texts() if t.startswith("helpful")]
    assert deltas == sorted(deltas, reverse=True) and len(deltas) == 20
    prompts = page.evaluate("explorer.data.runs[0].methods.find(m => m.points.some(p => p.id === explorer.state.point))"
                            ".prompts.val.map(i => explorer.data.strings[i])")
    word = prompts[3].split()[2].lower()
    page.fill("#filter", word)
    expected = sum(word in p.lower() for p in prompts)
    assert page.locator("#responses tr[data-index]").count() == min(20, expected) and expected >= 1
    page.select_option("#other", index=1)
    assert page.locator("#responses td.other-response").count() == min(20, expected)
    page.screenshot(path=tmp_path / "explorer-change.png", full_page=True)
    assert errors == []

    server = serve(run.root / "explorer.html", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.server_address[0] == "127.0.0.1"
        served, served_errors = open_page(browser, f"http://127.0.0.1:{server.server_address[1]}/explorer.html")
        assert drawn(served) > 2 and served_errors == []
    finally:
        server.shutdown()
        server.server_close()


def test_three_values_axes_are_selectable_and_hover_names_weights_and_intervals(tmp_path, browser):
    """A synthetic 3-value run (points written through the real store and Front.build): choosing the y axis plots
    that value, the hover text gives ω, means and intervals, and markup in responses stays text."""
    from mvalign.front import Front, PerSplit
    from mvalign.store import PointRecord

    values, rng = ["a", "b", "c"], np.random.default_rng(0)
    run = RunDir(tmp_path / "run3")
    store = run.store()

    def point(method, w, split):
        scores = {v: rng.normal(w.get(v, 0.0), 1.0, 6).tolist() for v in values}
        rec = PointRecord(method, w, split, f"{split}-key", {v: float(np.mean(s)) for v, s in scores.items()},
                          {v: [float(np.min(s)), float(np.max(s))] for v, s in scores.items()}, 6, 0.0, 0.0, {},
                          [f"{method} {w} answer {i} </script><!-- <b>x</b>" for i in range(6)], scores=scores)
        store.put_point(rec)
        return rec

    base = {s: point("base", dict.fromkeys(values, 0.0), s) for s in ("val", "test")}
    val = [point("mva", {"a": a, "b": b, "c": c}, "val") for a, b, c in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0.5)]]
    test = [point("mva", dict(p.label), "test") for p in val[:2]]
    front = Front.build(values, "mva", val, test, base["val"], base["test"])
    front.prompts = PerSplit(*([f"{s} prompt {i}" for i in range(6)] for s in ("val", "test")))
    run.write_front(front, "mva", primary=True)
    page, errors = open_page(browser, write_explorer([run]).as_uri())
    assert page.locator("#yaxis option").all_inner_texts() == values
    page.select_option("#yaxis", "2")
    traces = page.evaluate("document.getElementById('plot').data")
    got = next(t for t in traces if t["name"] == "mva · val")
    assert got["y"] == [p.rewards["c"] for p in val] and got["x"] == [p.rewards["a"] for p in val]
    assert "weights: a=1, b=0, c=0" in got["text"][0] and f"[{val[0].ci95['c'][0]:.3f}, " in got["text"][0]
    assert page.evaluate("document.getElementById('plot').layout.yaxis.title.text").startswith("c (judge")
    page.evaluate("explorer.showPoint('mva:0')")  # markup in a response is shown as text, never run or parsed
    assert page.locator("td.point-response").first.inner_text() == val[0].responses[0]
    assert page.locator("#responses b").count() == 0 and errors == []
