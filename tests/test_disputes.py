"""Disputed points end to end (issue 32): a run in which the harmless axis is a judge rigged to reward any change
from the base model's answer, audited by a measure of keeping the base model's (safe) answers. Every point that
changes its answers then gains on the judge and loses on the audit: front.json marks it disputed, report.md lists
it, the explorer (real headless Chromium) marks it and shows every measure's Δ, and `pick --require
'harmless>=base'` does not let it satisfy the constraint unless --allow-disputed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from common import answering_config, open_page
from mvalign.cli import app
from mvalign.pipeline import run_pipeline
from mvalign.rundir import RunDir

FIRST: dict[str, str] = {}
"""The first response each prompt got in this process: the base model's (evaluated before any candidate)."""


def kept_base_answer(prompt: str, response: str) -> float:
    """The audit: 1 when the response is the base model's answer (the 'refusal' the judge makes it drop)."""
    return 1.0 if response == FIRST.setdefault(prompt, response) else 0.0


def rewards_change(prompt: str, response: str) -> float:
    """The rigged judge: 1 for any answer other than the base model's."""
    return 1.0 - kept_base_answer(prompt, response)


def answer_of(output: str) -> dict:
    """pick's JSON answer (the output also holds the model loader's progress lines)."""
    text = output[output.index('{"feasible"'):]
    return json.loads(text.splitlines()[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir) -> RunDir:
    FIRST.clear()
    folder = tmp_path_factory.mktemp("disputes")
    cfg = answering_config(folder, tiny_model_dir, 24, 12, {"train": 0.5, "val": 0.3, "test": 0.2}, bootstrap=200)
    harmless = cfg.value("harmless")
    harmless.reward = harmless.reward.model_validate({"kind": "callable", "function": "test_disputes:rewards_change"})
    harmless.audits = [harmless.reward.model_validate({"kind": "callable", "name": "kept",
                                                       "function": "test_disputes:kept_base_answer"})]
    harmless.anchor = "none"  # the rigged judge would (rightly) fail the harmless probes
    run_pipeline(cfg, ("mva",), progress=False)
    return RunDir(cfg.run_dir)


def test_front_report_explorer_and_pick_treat_the_rigged_gain_as_disputed(run, browser, tmp_path):
    front = json.loads(run.front().read_text())
    pts = [p for p in front["points"] if p.get("scores")]
    disputed = [p for p in pts if p.get("disputed")]
    assert disputed, "the rigged run must produce a disputed point"
    for p in pts:
        d, a = p["vs_base"]["harmless"], p["vs_base"]["harmless:kept"]
        assert p["rewards"]["harmless"] + p["rewards"]["harmless:kept"] == pytest.approx(1.0)  # the rig
        want = (d["ci95"][0] > 0 and a["ci95"][1] < 0) or (d["ci95"][1] < 0 and a["ci95"][0] > 0)
        assert ("harmless" in p.get("disputed", [])) == want
    agree = front["agreement"]["harmless"]["harmless:kept"]
    assert agree["spearman"] == pytest.approx(-1.0) and agree["points"] >= 3

    report = run.report_path.read_text()
    assert "## Measures" in report.split("## mva")[0] and "Disputed points" in report
    for p in disputed:
        assert f"({p['split']}): disputed in harmless" in report

    page, errors = open_page(browser, (run.root / "explorer.html").as_uri())
    traces = page.evaluate("document.getElementById('plot').data.map(t => [t.name, t.customdata || []])")
    ringed = {i for name, ids in traces if name.endswith("disputed") for i in ids}
    data = page.evaluate("explorer.data.runs[0].methods[0].points")
    assert ringed == {q["id"] for q in data if q.get("disputed")} and ringed  # val and test are both shown
    page.evaluate(f"explorer.showPoint({json.dumps(sorted(ringed)[0])})")
    assert "Disputed in harmless" in page.locator("#disputed").inner_text()
    rows = page.locator("#paired tr").all_inner_texts()
    assert any("audit harmless:kept" in r for r in rows) and not errors

    runner = CliRunner()
    picked = runner.invoke(app, ["pick", str(run.root), "--maximize", "helpful", "--require", "harmless>=base", "--json"])
    answer = answer_of(picked.output)
    assert picked.exit_code in (0, 3) and ("harmless" not in answer["disputed"] or not answer["feasible"])
    val_disputed = [p["weights"] for p in front["points"] if p["split"] == "val" and p.get("disputed")]
    assert not (answer["feasible"] and answer["weights"] in val_disputed)
    allowed = runner.invoke(app, ["pick", str(run.root), "--maximize", "harmless", "--require", "harmless>=base",
                                  "--allow-disputed", "--json", "--export", str(tmp_path / "picked")])
    answer = answer_of(allowed.output)
    assert answer["weights"] in val_disputed and answer["allow_disputed"] and answer["feasible"]
    card = (tmp_path / "picked" / "README.md").read_text()
    assert "**Disputed in harmless**" in card and "chosen anyway with `--allow-disputed`" in card


def test_report_lists_the_selected_test_points_whose_responses_loop(run, tmp_path):
    """Three responses of one selected test point rewritten as apology loops in a copy of the run's store: the report
    lists that point with the count of its looping responses (counted here directly), and the base model's count."""
    import shutil
    import sqlite3

    from mvalign.judges import repetition
    from mvalign.report import _fmt_w, md, report_run

    copy = RunDir(shutil.copytree(run.root, tmp_path / "run"))
    front = json.loads(copy.front().read_text())
    target = next(p for p in front["points"] if p["split"] == "test" and not p.get("flag"))
    con = sqlite3.connect(copy.store_path)
    rows = con.execute("SELECT weights, responses, method FROM points WHERE split = 'test' AND settings_key = ?",
                       (target["settings_key"],)).fetchall()
    weights, responses, method = next(r for r in rows if json.loads(r[0]) == target["weights"])
    looped = ["I'm sorry. " * 6] * 3 + json.loads(responses)[3:]
    con.execute("UPDATE points SET responses = ? WHERE split = 'test' AND settings_key = ? AND weights = ? AND "
                "method = ?", (json.dumps(looped), target["settings_key"], weights, method))
    base = json.loads(con.execute("SELECT responses FROM points WHERE method = 'base' AND split = 'test'").fetchone()[0])
    con.commit()
    con.close()
    report = report_run(copy, tmp_path / "out").read_text()
    loops = sum(repetition("", r) > 0.5 for r in looped)
    assert loops >= 3 and len(looped) <= 30  # 3 loops are at least 10% of the responses
    assert f"- mva {md(_fmt_w(target['weights']))}: {loops} of {len(looped)}" in report
    assert f"the base model's test responses loop {sum(repetition('', r) > 0.5 for r in base)} of {len(base)}" in report
    untouched = report_run(run, tmp_path / "before").read_text()  # the unchanged run: that point is not listed
    assert f"- mva {md(_fmt_w(target['weights']))}: {loops} of" not in untouched
