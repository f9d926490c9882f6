"""Racing (issue 14): shares, the paired dominance rule against a direct computation, and a raced evaluation whose
survivors carry exactly the records of the full evaluation and keep its whole non-dominated set."""

from __future__ import annotations

import math
import shutil
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from common import save_random_adapter, write_builtin_config
from mvalign.candidates import Candidate
from mvalign.config import load_config
from mvalign.pareto import non_dominated
from mvalign.race import dominance, dominated, race, shares
from mvalign.rewards import CallableReward
from mvalign.store import RunStore


def test_shares_are_equal_steps_from_the_first_and_end_at_n():
    assert shares(64, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert shares(64, 8, double=True) == [8, 16, 32, 64]  # the earlier schedule
    assert shares(10, 8) == [8, 10]
    assert shares(5, 8) == [5]
    assert shares(200, 8) == [25, 50, 75, 100, 125, 150, 175, 200]  # at least an eighth first


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


def test_dominance_statistic_against_a_direct_computation():
    rng = np.random.default_rng(1)
    n = 12
    cands = [rng.normal(size=(2, n)) + rng.normal(size=(2, 1)) for _ in range(5)]
    cands[1] = np.round(cands[1] * 8) / 8               # (so that adding 0.5 / 0.25 below is exact)
    cands.append(cands[0].copy())                       # identical to candidate 0: D ≡ 0 against it
    cands.append(cands[1] + np.array([[0.5], [0.25]]))  # beats candidate 1 by a constant: se = 0, t = +inf

    def t_direct(c):
        best = -math.inf
        for d in range(len(cands)):
            if d == c:
                continue
            worst = math.inf
            for v in range(2):
                diff = list(cands[d][v] - cands[c][v])
                m, sd = statistics.fmean(diff), statistics.stdev(diff)
                r = m / (sd / math.sqrt(n)) if sd > 0 else (0.0 if m == 0 else math.copysign(math.inf, m))
                worst = min(worst, r)
            best = max(best, worst)
        return best

    got = dominance(cands)
    want = [t_direct(c) for c in range(len(cands))]
    assert got[1] == math.inf and want[1] == math.inf
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert list(dominance([c[:, :1] for c in cands])) == [-math.inf] * len(cands)  # one prompt: nothing known
    assert dominated(cands, 2.0) == [bool(t > 2.0) for t in want]
    # about the mean over 48 prompts of which these 12 are seen: se shrinks by √(1 − 12/48)
    assert dominance(cands, total=48) == pytest.approx([w / math.sqrt(1 - 12 / 48) for w in want], rel=1e-9, abs=1e-12)
    # many candidates are compared block by block (bounded memory): the same numbers as one candidate at a time
    many = list(rng.normal(size=(300, 2, 64)))
    got = dominance(many)

    def one(c):
        diff = np.delete(np.stack(many), c, axis=0) - many[c]  # (every d ≠ c) × values × prompts
        return (diff.mean(axis=2) / (diff.std(axis=2, ddof=1) / 8)).min(axis=1).max()

    assert [got[c] for c in (0, 150, 217, 218, 299)] == pytest.approx([one(c) for c in (0, 150, 217, 218, 299)], rel=1e-12)


def test_the_finite_population_interval_covers_the_full_mean_at_the_nominal_rate():
    """What the correction claims: after n of N prompts, the paired mean over all N lies within
    mean_n ± q · sd_n/√n · √(1 − n/N) in 95% of cases (exchangeable prompts; q: Student's t quantile, 31 df).
    Without the correction the interval is too wide (~99%), with (1 − n/N) instead of its root too narrow (~84%)."""
    rng = np.random.default_rng(3)
    n, total, reps, q = 32, 64, 4000, 2.0395
    d = rng.normal(0.3, 2.0, size=(reps, total))
    seen = d[:, :n]
    se = seen.std(axis=1, ddof=1) / math.sqrt(n)
    miss = np.abs(d.mean(axis=1) - seen.mean(axis=1))
    assert 0.94 <= np.mean(miss <= q * se * math.sqrt(1 - n / total)) <= 0.96  # binomial sd over 4000: 0.0034
    assert np.mean(miss <= q * se) > 0.985 and np.mean(miss <= q * se * (1 - n / total)) < 0.87


def test_race_drops_on_the_corrected_statistic_in_equal_shares():
    """Two candidates, 16 prompts, shares of 8: after 8 prompts candidate 1 beats candidate 0 on both values with
    paired t = √7 / 1.25 ≈ 2.12 about the population mean (kept at z = 2.5) but t / √(1 − 8/16) ≈ 2.99 about the
    16-prompt mean (dropped): the corrected race generates 24 of 32 rows, the uncorrected one all."""
    lower = np.zeros((2, 16))
    upper = 1 + 1.25 * np.array([[(-1.0) ** i for i in range(16)]] * 2)
    cands = [Candidate.combination({"a": 0.0}), Candidate.combination({"a": 1.0})]
    recs = [SimpleNamespace(flag="", s=lower), SimpleNamespace(flag="", s=upper)]
    seen = []

    def evaluate(cs, a, b):
        seen.append((len(cs), a, b))
        return [recs[cands.index(c)] for c in cs]

    got = race(cands, list(range(16)), evaluate, lambda r, a, b: r.s[:, a:b], first=8, z=2.5)
    assert seen == [(2, 0, 8), (1, 8, 16)] and got.survivors == [cands[1]] and got.token_fraction == 24 / 32
    assert got.dropped == [(cands[0], 8)] and [r["left"] for r in got.rounds] == [1, 1]
    seen.clear()
    plain = race(cands, list(range(16)), evaluate, lambda r, a, b: r.s[:, a:b], first=8, z=2.5, finite=False)
    assert seen == [(2, 0, 8), (2, 8, 16)] and plain.survivors == cands and plain.token_fraction == 1.0


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
        fronts[mode] = evaluate_method(cfg, "mva", progress=False, rewards=judges).to_json()  # the published form
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
        rec = next(p for p in stores["off"].points("mva", "val") if p.label == d["weights"])
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
    a = next(p for p in stores["on"].points("mva", "val") if p.label == one)
    b = next(p for p in stores["off"].points("mva", "val") if p.label == one)
    assert a.responses == b.responses and a.settings_key == b.settings_key
    # Evaluator.stored: the survivors' joined records are found under the run's settings, the dropped are not
    from mvalign.candidates import Candidate
    from mvalign.evaluate import evaluator

    cfg = load_config(tmp_path / "on" / "config.yaml")
    with evaluator(cfg, "mva", progress=False, rewards=judges) as ev:
        for p in raced.values():
            assert ev.stored(Candidate.combination(p["weights"]), "val").responses == \
                next(r for r in stores["on"].points("mva", "val") if r.label == p["weights"]).responses
        assert all(ev.stored(Candidate.combination(d["weights"]), "val") is None for d in info["dropped"])
        cfg.sweep.max_new_tokens += 1  # other generation settings: nothing stored under them
        assert ev.stored(Candidate.combination(one), "val") is not None
    with evaluator(cfg, "mva", progress=False, rewards=judges) as ev:
        assert ev.stored(Candidate.combination(one), "val") is None


def json_key(point):
    return tuple(sorted(point["weights"].items()))
