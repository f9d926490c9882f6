"""A person's labels of the run's own responses (issue 37): labelled in the explorer in a real headless Chromium,
saved into the run by the served page (and surviving a reload), downloaded from a file:// page and imported to the
same state; every measure's κ against them equals a direct computation (scikit-learn); bad label files name
file:line and keep their good lines; two tabs labelling at once lose nothing; labels never touch points or fronts."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from common import answering_config, open_page
from mvalign.cli import app
from mvalign.explorer import serve
from mvalign.labels import LabelIndex, agreement_with_people, labels_path, latest, read_labels
from mvalign.pipeline import run_pipeline
from mvalign.rundir import RunDir
from mvalign.stats import json_key

PICKS = [("helpful", 0, "better"), ("harmless", 0, "worse"), ("helpful", 1, "same"), ("harmless", 2, "better"),
         ("helpful", 3, "worse")]


def words(prompt: str, response: str) -> float:
    """An audit of harmless: the number of words (a second, cruder measure)."""
    return float(len(response.split()))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir) -> RunDir:
    folder = tmp_path_factory.mktemp("labels")
    cfg = answering_config(folder, tiny_model_dir, 12, 5, {"train": 0.6, "val": 0.3, "test": 0.1})
    cfg.value("harmless").audits = [cfg.value("harmless").reward.model_validate(
        {"kind": "callable", "function": "test_labels:words", "name": "words"})]
    run_pipeline(cfg, ("mva",), progress=False)
    return RunDir(cfg.run_dir)


def snapshot(run: RunDir):
    con = sqlite3.connect(run.store_path)
    rows = sorted(con.execute("SELECT * FROM points").fetchall(), key=repr)
    con.close()
    return rows, {p.name: p.read_text() for p in run.root.glob("front*.json")}


def label_in_page(page, point_id: str) -> None:
    page.evaluate(f"explorer.showPoint({json.dumps(point_id)})")
    for value, i, verdict in PICKS:
        page.select_option(f"#verdict-{value}-{i}", verdict)
        page.wait_for_function(f"explorer.state.labels.size >= 0 && document.getElementById('label-status')"
                               f".textContent.includes('saved {value} = {verdict}')")


def effective(run: RunDir) -> set:
    recs = latest(read_labels(labels_path(run), LabelIndex(run))[0]).values()
    return {(r["method"], r["split"], json_key(r["weights"]), r["settings_key"], r["prompt"], r["value"], r["label"])
            for r in recs}


def test_served_labels_persist_and_kappa_matches_a_direct_computation(run, browser, tmp_path):
    before = snapshot(run)
    labels_path(run).unlink(missing_ok=True)
    server = serve(run.root / "explorer.html", 0, [run])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"http://127.0.0.1:{port}/explorer.html"
    try:
        page, errors = open_page(browser, url)
        point = next(p for p in page.evaluate("explorer.data.runs[0].methods[0].points") if p["split"] == "val")
        label_in_page(page, point["id"])
        lines = labels_path(run).read_text().splitlines()
        assert len(lines) == 5
        recs = [json.loads(x) for x in lines]
        assert [(r["value"], r["prompt"], r["label"]) for r in recs] == PICKS
        assert all(r["weights"] == point["weights"] and r["split"] == "val" and r["who"] == "anonymous" for r in recs)

        page.reload()
        page.wait_for_selector("#status[data-drawn]")
        page.wait_for_function("explorer.state.labels.size === 5")
        page.evaluate(f"explorer.showPoint({json.dumps(point['id'])})")
        assert [page.eval_on_selector(f"#verdict-{v}-{i}", "e => e.value") for v, i, _ in PICKS] == [x for *_, x in PICKS]

        nxt = page.evaluate("explorer.nextToLabel()")  # an unlabelled response, shown and outlined
        assert nxt is not None and page.locator("tr.focus").count() == 1
        assert (nxt["v"], nxt["i"]) not in {(v, i) for v, i, _ in PICKS} or nxt["id"] != point["id"]

        # two tabs labelling at once: 2 × 12 labels posted concurrently, none lost
        second, _ = open_page(browser, url)
        script = """async ([p, tab]) => Promise.all([...Array(12).keys()].map((i) => fetch('/labels', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: JSON.stringify({run: 0, labels: [{value: 'helpful',
            label: ['better', 'same', 'worse'][(i + tab) % 3], method: 'mva', split: p.split, weights: p.weights,
            settings_key: p.settings_key, prompt: i % 12, who: 'tab' + tab}]})}).then((r) => r.status)))"""
        other = next(p for p in page.evaluate("explorer.data.runs[0].methods[0].points")
                     if p["split"] == "val" and p["id"] != point["id"])
        statuses = [page.evaluate(script, [other, 1]), second.evaluate(script, [other, 2])]
        assert statuses == [[200] * 12, [200] * 12] and len(labels_path(run).read_text().splitlines()) == 29
        assert errors == []

        # the server serves the page and the labels API only, and only to its own Host
        for path, code in (("/store.sqlite", 404), ("/config.yaml", 404), ("/../", 404)):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}")
            assert e.value.code == code
        req = urllib.request.Request(f"http://127.0.0.1:{port}/labels", headers={"Host": "attacker.example:80"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 403
    finally:
        server.shutdown()
        server.server_close()

    # κ and accuracy of every measure vs the labels, against scikit-learn on the front's own per-prompt changes
    agree = agreement_with_people(run, n_boot=200)
    front = json.loads(run.front("mva").read_text())
    recs = list(latest(read_labels(labels_path(run), LabelIndex(run))[0]).values())
    for key in ("helpful", "harmless", "harmless:words"):
        value = key.split(":")[0]
        people, measure = [], []
        for r in (r for r in recs if r["value"] == value):
            p = next(p for p in front["points"] if p["split"] == r["split"] and p["weights"] == r["weights"])
            d = p["scores"][key][r["prompt"]] - front["base"]["scores_val"][key][r["prompt"]]
            people.append(r["label"])
            measure.append("better" if d > 0 else "worse" if d < 0 else "same")
        got = agree[key]
        assert got["n"] == len(people) and got["accuracy"] == pytest.approx(np.mean(np.array(people) == np.array(measure)))
        want = cohen_kappa_score(people, measure, labels=["better", "same", "worse"])
        assert got["kappa"] == pytest.approx(want) or (np.isnan(want) and np.isnan(got["kappa"]))
    assert agree["helpful"]["n"] == 3 + 2 * 12 and agree["helpful"]["shown"]
    assert snapshot(run) == before  # labels never touch points or fronts

    # the audit carries them; without the file it does not
    from mvalign.audit import audit_config

    cfg = run.load_config()
    assert audit_config(cfg)["measures"]["harmless:words"]["people"]["n"] == 2
    shown = CliRunner().invoke(app, ["judges", "audit", str(run.root)])
    assert "helpful (primary, bt-head): " in shown.output and "vs this run's labels: κ" in shown.output
    saved = labels_path(run).rename(tmp_path / "saved.jsonl")
    assert "people" not in audit_config(cfg)["measures"]["helpful"]
    saved.rename(labels_path(run))


def test_file_page_download_imports_to_the_same_state(run, browser, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run.root, copy)
    labels_path(RunDir(copy)).unlink(missing_ok=True)
    (copy / "explorer.html").write_text((run.root / "explorer.html").read_text())
    served = tmp_path / "served"
    shutil.copytree(copy, served)
    page, errors = open_page(browser, (copy / "explorer.html").as_uri())
    point = next(p for p in page.evaluate("explorer.data.runs[0].methods[0].points") if p["split"] == "val")
    label_in_page(page, point["id"])
    with page.expect_download() as dl:
        page.click("#download-labels")
    file = tmp_path / "downloaded.jsonl"
    dl.value.save_as(file)
    assert len(file.read_text().splitlines()) == 5 and errors == []
    result = CliRunner().invoke(app, ["labels", "import", str(copy), str(file)])
    assert result.exit_code == 0 and "imported 5 labels" in result.output, result.output
    again = CliRunner().invoke(app, ["labels", "import", str(copy), str(file)])
    assert "imported 0 labels (5 already in the run)" in again.output
    # the same verdicts given through the API of a served copy give the same state
    from mvalign.labels import append_labels

    recs = [json.loads(x) for x in file.read_text().splitlines()]
    append_labels(RunDir(served), [{k: v for k, v in r.items() if k not in ("id", "when")} for r in recs])
    assert effective(RunDir(copy)) == effective(RunDir(served)) and len(effective(RunDir(copy))) == 5


def test_a_corrupt_labels_file_names_file_and_line_and_keeps_the_good_lines(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run.root, copy)
    labels_path(RunDir(copy)).unlink(missing_ok=True)
    front = json.loads((copy / "front-mva.json").read_text())
    p = next(p for p in front["points"] if p["split"] == "val")
    good = {"value": "helpful", "label": "better", "method": "mva", "split": "val", "weights": p["weights"],
            "settings_key": p["settings_key"], "prompt": 0, "who": "x", "when": "2026-01-01T00:00:00+00:00"}
    lines = [json.dumps({**good, "id": "a"}), json.dumps({**good, "id": "b", "prompt": 1})[:40],  # truncated
             json.dumps({**good, "id": "c", "settings_key": "nope"}), json.dumps({**good, "id": "a", "prompt": 2}),
             json.dumps({**good, "id": "d", "prompt": 3, "label": "worse"})]
    file = tmp_path / "bad.jsonl"
    file.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["labels", "import", str(copy), str(file)])
    assert result.exit_code == 1
    assert "imported 2 labels" in result.output
    err = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and f"{file}:2: not a JSON record" in err[0] and "3 bad line(s)" in err[0]
    _, bad = read_labels(file, LabelIndex(RunDir(copy)))
    assert [b.split(": ", 1)[0] for b in bad] == [f"{file}:2", f"{file}:3", f"{file}:4"]
    assert "unknown response" in bad[1] and "repeats the id" in bad[2]
    assert {r["id"] for r in read_labels(labels_path(RunDir(copy)), LabelIndex(RunDir(copy)))[0]} == {"a", "d"}
