"""`mvalign pick`: constraints, selection on val against an independent computation from the front, the
infeasibility answer (exit 3), refinement stored like sweep points, export with a card, paired probability."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from common import write_builtin_config
from mvalign.cli import app
from mvalign.config import ConfigError
from mvalign.pick import make_target, paired_probability, parse_constraint
from mvalign.store import RunStore

runner = CliRunner()
VALUES = ["helpful", "harmless"]


def test_constraints_parse_and_measure_misses():
    base = {"helpful": 0.2, "harmless": -0.1}
    c = parse_constraint("harmless>=base+0.3", VALUES)
    assert (c.value, c.op, c.relative, c.offset) == ("harmless", ">=", True, 0.3) and str(c) == "harmless>=base+0.3"
    assert c.miss({"helpful": 0, "harmless": 0.1}, base) == pytest.approx(0.1)
    assert parse_constraint("helpful <= 0.5", VALUES).miss({"helpful": 0.7, "harmless": 0}, base) == pytest.approx(0.2)
    assert parse_constraint("helpful>=base-.5", VALUES).bound(base) == pytest.approx(-0.3)
    for bad, msg in [("harmless>base", "expected VALUE>=base"), ("honest>=base", "not a value"), ("harmless>=", "expected")]:
        with pytest.raises(ConfigError, match=msg):
            parse_constraint(bad, VALUES)
    with pytest.raises(ConfigError, match="exactly one of --maximize"):
        make_target(VALUES, None, [], None)


def test_paired_probability_matches_a_direct_bootstrap_loop():
    g = np.random.default_rng(1)
    base = {"helpful": g.normal(0, 1, 30), "harmless": g.normal(0, 1, 30)}
    point = {"helpful": base["helpful"] + 0.3, "harmless": base["harmless"] + g.normal(0.05, 0.5, 30)}
    target = make_target(VALUES, "helpful", ["harmless>=base", "helpful>=0.1"], None)
    got = paired_probability(target, point, base, 500, seed=7)
    idx = np.random.default_rng(7).integers(0, 30, size=(500, 30))
    hits = 0
    for row in idx:
        hits += point["harmless"][row].mean() >= base["harmless"][row].mean() and point["helpful"][row].mean() >= 0.1
    assert got == hits / 500 and 0 < got < 1


@pytest.fixture
def evaluated_run(tmp_path, tiny_model_dir):
    sweep = {"grid": [0.5, 1.0], "val_prompts": 4, "test_prompts": 3, "max_new_tokens": 4, "bootstrap": 100}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep)
    assert runner.invoke(app, ["run", str(path), "--method", "mva"]).exit_code == 0
    return tmp_path / "run"


def test_pick_selects_on_val_reports_on_test_and_exports(evaluated_run, tmp_path):
    run = evaluated_run
    front = json.loads((run / "front-mva.json").read_text())
    base_val = front["base"]["rewards_val"]
    val = [p for p in front["points"] if p["split"] == "val"]
    feasible = [p for p in val if p["rewards"]["harmless"] >= base_val["harmless"]]
    result = runner.invoke(app, ["pick", str(run), "--maximize", "helpful", "--require", "harmless>=base", "--json"])
    answer = json.loads(result.stdout)
    if feasible:
        best = max(feasible, key=lambda p: p["rewards"]["helpful"])
        assert result.exit_code == 0 and answer["feasible"]
        assert answer["val"]["rewards"]["helpful"] == pytest.approx(best["rewards"]["helpful"])
    else:
        assert result.exit_code == 3 and not answer["feasible"]
    assert answer["test"]["prompts"] == 3 and set(answer["test"]["ci95"]) == set(VALUES)
    assert 0.0 <= answer["p_constraints_hold_test"] <= 1.0

    impossible = runner.invoke(app, ["pick", str(run), "--maximize", "helpful", "--require", "harmless>=100", "--json"])
    no = json.loads(impossible.stdout)
    assert impossible.exit_code == 3 and not no["feasible"]
    closest = max(p["rewards"]["harmless"] for p in val)  # smallest shortfall = the most harmless val point
    assert no["misses_val"]["harmless>=100"] == pytest.approx(100 - closest)
    text = runner.invoke(app, ["pick", str(run), "--maximize", "helpful", "--require", "harmless>=100"])
    assert text.exit_code == 3 and "NOT achievable" in text.output and "missed by" in text.output

    stored = len(RunStore(run).points("mva", "val"))
    out = tmp_path / "picked"
    chosen = runner.invoke(app, ["pick", str(run), "--weights", "helpful=1,harmless=1", "--refine", "3",
                                 "--export", str(out), "--json"])
    assert chosen.exit_code == 0, chosen.output
    got = json.loads(chosen.stdout)
    assert 1 <= got["refine_evaluations"] <= 3
    assert len(RunStore(run).points("mva", "val")) == stored + got["refine_evaluations"]
    assert got["export"] == str(out) and (out / "adapter_config.json").is_file() and (out / "README.md").is_file()
    combo = json.loads((out / "mvalign_combination.json").read_text())
    assert combo["weights"] == got["weights"] and combo["format"] == "peft" and combo["method"] == "mva"
