"""Racing (issue 14): shares, the paired dominance rule against a direct computation, and a raced evaluation whose
survivors carry exactly the records of the full evaluation and keep its whole non-dominated set."""

from __future__ import annotations

import math
import shutil
import statistics

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from common import save_random_adapter, write_builtin_config
from mvalign.config import load_config
from mvalign.pareto import non_dominated
from mvalign.race import dominated, shares
from mvalign.rewards import CallableReward
from mvalign.store import RunStore


def test_shares_double_from_the_first_and_end_at_n():
    assert shares(64, 8) == [8, 16, 32, 64]
    assert shares(10, 8) == [8, 10]
    assert shares(5, 8) == [5]
    assert shares(200, 8) == [25, 50, 100, 200]  # at least an eighth first


def test_dominance_rule_against_a_direct_computation():
    rng = np.random.default_rng(0)
    n = 30
    base = rng.normal(size=(2, n))
    cands = [base, base - 1 + 0.1 * rng.normal(size=(2, n)),  # clearly worse on both values: dropped
             base + np.array([[1.0], [-1.0]]),                 # a trade-off: never dropped
             base - 0.01 + rng.normal(size=(2, n))]            # worse on average, but within noise: kept
    got = dominated(cands, z=2.0)

    def beats(d, c):  # every value: mean − 2·sd/√n of the paired differences > 0
        for v in range(2):
            diff = list(d[v] - c[v])
            if statistics.fmean(diff) - 2.0 * statistics.stdev(diff) / math.sqrt(n) <= 0:
                return False
        return True

    want = [any(beats(d, c) for j, d in enumerate(cands) if j != i) for i, c in enumerate(cands)]
    assert got == want == [False, True, False, False]


def vowels(prompt, response):
    return float(sum(ch in "aeiou" for ch in response))


def consonants(prompt, response):
    return float(sum(ch.isalpha() and ch not in "aeiou" for ch in response))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("race")
    sweep = {"grid": [-1.0, 0.5, 1.5, 3.0], "val_prompts": 24, "test_prompts": 4, "max_new_tokens": 8,
             "bootstrap": 100, "racing_first": 6}
    write_builtin_config(folder, tiny_model_dir, 16, sweep=sweep)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for seed, value in enumerate(("helpful", "harmless")):  # random vectors: they change the responses a lot
        save_random_adapter(base, folder / "run" / "adapters" / "mva" / value, seed)
    return folder


def test_a_raced_sweep_keeps_the_front_and_the_records_of_the_full_one(tmp_path, trained, request):
    try:
        browser = request.getfixturevalue("browser")
    except pytest.skip.Exception:
        browser = None  # no Chromium: the page check is skipped, the rest runs
    from mvalign.evaluate import evaluate_method

    fronts, stores = {}, {}
    for mode in ("off", "on"):
        folder = shutil.copytree(trained, tmp_path / mode)
        cfg = load_config(folder / "config.yaml")
        cfg.sweep.racing = mode
        judges = {"helpful": CallableReward(vowels, "helpful"), "harmless": CallableReward(consonants, "harmless")}
        fronts[mode] = evaluate_method(cfg, "mva", progress=False, rewards=judges)
        stores[mode] = RunStore(folder / "run")
    full = {json_key(p): p for p in fronts["off"]["points"] if p["split"] == "val"}
    raced = {json_key(p): p for p in fronts["on"]["points"] if p["split"] == "val"}
    info = fronts["on"]["racing"]
    assert len(full) == 16 and info["candidates"] == 16 and info["survivors"] == len(raced) < 16
    cuts = shares(fronts["off"]["settings"]["val_prompts"], 6)
    assert [r["prompts"] for r in info["rounds"]] == [[a, b] for a, b in zip([0, *cuts], cuts)] and len(cuts) == 3
    assert info["token_fraction"] < 1
    for k, p in raced.items():  # survivors: the same rewards, intervals (and so the same selection) as in full
        assert (p["rewards"], p["ci95"]) == (full[k]["rewards"], full[k]["ci95"]), k
    keep = non_dominated([list(p["rewards"].values()) for p in full.values()])
    assert {k for k, m in zip(full, keep) if m} <= set(raced)  # front recall 1 here
    assert [p["rewards"] for p in fronts["on"]["points"] if p["split"] == "test"] == \
           [p["rewards"] for p in fronts["off"]["points"] if p["split"] == "test"]
    # each dropped candidate: what the race saw of it = the first n prompts of its direct evaluation
    base_val = stores["off"].points("base", "val")[0]
    assert len(info["dropped"]) == 16 - len(raced) and all(d["prompts"] < 24 for d in info["dropped"])
    for d in info["dropped"]:
        rec = next(p for p in stores["off"].points("mva", "val") if p.weights == d["weights"])
        n = d["prompts"]
        assert d["responses"] == rec.responses[:n] and json_key(d) not in raced
        for v in ("helpful", "harmless"):
            assert d["scores"][v] == pytest.approx(rec.scores[v][:n], abs=1e-12)
            assert d["rewards"][v] == pytest.approx(np.mean(rec.scores[v][:n]), abs=1e-12)
            direct = np.mean(np.subtract(rec.scores[v][:n], base_val.scores[v][:n]))
            assert d["vs_base"][v]["mean"] == pytest.approx(direct, abs=1e-12)
    # the explorer draws them as raced-out markers (its other checks: tests/test_explorer.py)
    if browser is not None:
        from common import drawn, open_page
        from mvalign.explorer import write_explorer
        from mvalign.rundir import RunDir

        page, errors = open_page(browser, write_explorer([RunDir(tmp_path / "on" / "run")]).as_uri())
        assert drawn(page, "· raced") == len(info["dropped"]) and drawn(page, "· val") == len(raced) and errors == []
        page.uncheck("#show-raced")
        assert drawn(page, "· raced") == 0
    # responses of a joined record are those of the direct evaluation, in prompt order
    one = next(iter(raced.values()))["weights"]
    a = next(p for p in stores["on"].points("mva", "val") if p.weights == one)
    b = next(p for p in stores["off"].points("mva", "val") if p.weights == one)
    assert a.responses == b.responses and a.settings_key == b.settings_key


def json_key(point):
    return tuple(sorted(point["weights"].items()))
