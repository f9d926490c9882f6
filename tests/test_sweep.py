"""The sweep engine on a tiny model with programmatic reward scorers: strategies, storage, resume after a kill."""

import copy

import pytest

from common import save_random_adapter
from mvalign.candidates import grid_points, simplex_points, strategy_points
from mvalign.combine import CombinedModel, load_lora_adapter
from mvalign.config import ConfigError, SweepSettings
from mvalign.generate import GenerationSettings, generate_responses
from mvalign.rewards import CallableReward
from mvalign.store import RunStore
from mvalign.sweep import SweepContext, evaluate_points

PROMPTS = ["Tell me about tea.", "How do I fix a bike?", "What is rain?", "Name a colour."]


def test_strategies():
    ref = grid_points(["helpful", "harmless"], [round(0.1 * i, 1) for i in range(1, 11)])
    assert len(ref) == 100 and {"helpful": 1.0, "harmless": 0.1} in ref
    simplex = simplex_points(["a", "b", "c"], 0.25)
    assert len(simplex) == 15 and all(sum(p.values()) == pytest.approx(1.0) for p in simplex)
    assert strategy_points(SweepSettings(strategy="list", points=[{"a": 2.0}]), ["a", "b"]) == [{"a": 2.0, "b": 0.0}]
    with pytest.raises(ConfigError, match="unknown values"):
        strategy_points(SweepSettings(strategy="list", points=[{"c": 1.0}]), ["a", "b"])
    with pytest.raises(ConfigError, match="does not divide 1"):
        simplex_points(["a", "b"], 0.3)


def test_generation_is_batched_left_padded_and_deterministic(tokenizer, tiny_llama):
    settings = GenerationSettings(max_new_tokens=6, batch_size=3)
    batched = generate_responses(tiny_llama, tokenizer, PROMPTS, settings)
    single = [generate_responses(tiny_llama, tokenizer, [p], settings)[0] for p in PROMPTS]
    assert batched == single and len(batched) == 4
    assert tokenizer.padding_side == "right"  # restored


class Counting:
    """Wraps a scorer and counts calls; raises once after `fail_after` calls (a killed sweep)."""

    def __init__(self, fn, fail_after=None):
        self.fn, self.calls, self.fail_after = fn, 0, fail_after

    def __call__(self, prompt, response):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            self.fail_after = None
            raise KeyboardInterrupt("killed")
        return self.fn(prompt, response)


def _sweep(tmp_path, tokenizer, model, store, scorers):
    dirs = [save_random_adapter(model, tmp_path / n, i) for i, n in enumerate(["x", "y"])]
    combined = CombinedModel(copy.deepcopy(model), [load_lora_adapter(d) for d in dirs])
    rewards = {"x": CallableReward(scorers[0], "x"), "y": CallableReward(scorers[1], "y")}
    points = grid_points(["x", "y"], [0.5, 1.0, 2.0])
    ctx = SweepContext(rewards, GenerationSettings(max_new_tokens=5, batch_size=2), store, bootstrap=200)
    return lambda: evaluate_points(ctx, combined, tokenizer, points, method="mva", split="val", prompts=PROMPTS,
                                   progress=False)


def length_score(p, r):
    return float(len(r))


def vowel_score(p, r):
    return float(sum(c in "aeiou" for c in r))


def test_killed_sweep_resumes_without_recomputing(tmp_path, tokenizer, tiny_llama):
    straight = _sweep(tmp_path / "a", tokenizer, tiny_llama, RunStore(tmp_path / "a"),
                      [Counting(length_score), Counting(vowel_score)])()
    assert len(straight) == 9 and len({tuple(p.rewards.values()) for p in straight}) > 1

    killer = Counting(length_score, fail_after=4 * 5)  # dies while scoring the 6th point
    store = RunStore(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path / "b", tokenizer, tiny_llama, store, [killer, Counting(vowel_score)])()
    assert len(store.points()) == 5
    fresh = Counting(length_score)
    resumed = _sweep(tmp_path / "b", tokenizer, tiny_llama, store, [fresh, Counting(vowel_score)])()
    assert fresh.calls == 4 * 4  # only the 4 missing points were generated and scored
    assert [(p.label, p.rewards, p.ci95, p.responses) for p in resumed] == \
           [(p.label, p.rewards, p.ci95, p.responses) for p in straight]
    again = Counting(length_score)
    _sweep(tmp_path / "b", tokenizer, tiny_llama, store, [again, Counting(vowel_score)])()
    assert again.calls == 0


def test_degenerate_models_are_flagged_and_never_selected(tmp_path, tokenizer, tiny_llama):
    """A ω whose weights overflow is stored with a flag (no generation on non-finite weights) and left out of the
    front's Pareto set, hypervolume and reference point; later points are unaffected."""
    from mvalign.front import Front

    dirs = [save_random_adapter(tiny_llama, tmp_path / n, i) for i, n in enumerate(["x", "y"])]
    combined = CombinedModel(copy.deepcopy(tiny_llama), [load_lora_adapter(d) for d in dirs])
    store = RunStore(tmp_path / "run")
    rewards = {"x": CallableReward(length_score, "x"), "y": CallableReward(vowel_score, "y")}
    ctx = SweepContext(rewards, GenerationSettings(max_new_tokens=5, batch_size=2), store, bootstrap=200)
    common = dict(method="mva", prompts=PROMPTS, progress=False)
    points = [{"x": 1.0, "y": 0.5}, {"x": 3e38, "y": 3e38}, {"x": 0.5, "y": 1.0}]
    val = evaluate_points(ctx, combined, tokenizer, points, split="val", **common)
    assert [p.flag for p in val] == ["", "non-finite weights", ""] and val[1].responses == [""] * 4
    assert [p.flag for p in store.points("mva", "val")] == ["", "non-finite weights", ""]  # stored with the flag
    again = evaluate_points(ctx, combined, tokenizer, points[2:], split="val", **common)
    assert again[0].responses == val[2].responses  # from the store
    base = evaluate_points(ctx, combined, tokenizer, [{"x": 0.0, "y": 0.0}], method="base", split="val",
                           prompts=PROMPTS, progress=False)[0]
    front = Front.build(["x", "y"], "mva", val, [val[0]], base, base)
    bad = [p for p in front.points if p.flag]
    assert len(bad) == 1 and not bad[0].pareto and bad[0].weights["x"] == 3e38
    assert all(abs(r) < 1e6 for r in front.reference_point)
    assert len(front.on("val")) == 2 and len(front.on("val", usable=False)) == 3


def test_mixed_passes_give_the_records_of_the_one_point_path(tmp_path, tokenizer, tiny_llama):
    """Points generated several per pass (mixed-ω batching) are stored exactly as one at a time would store them;
    a huge ω and a prompt-transformed candidate are handled too, and a half-stored pass resumes."""
    from mvalign.candidates import Candidate
    from mvalign.mixed import MixedLoRA
    from mvalign.sweep import Passes

    class Shout:  # a prompt transform, as RiC's candidates carry
        key = "shout"

        @staticmethod
        def apply(prompt):
            return prompt.upper()

    dirs = [save_random_adapter(tiny_llama, tmp_path / n, i) for i, n in enumerate(["x", "y"])]
    adapters = [load_lora_adapter(d) for d in dirs]
    rewards = {"x": CallableReward(length_score, "x"), "y": CallableReward(vowel_score, "y")}
    cands = [*grid_points(["x", "y"], [-0.5, 1.0, 2.5]), {"x": 1e20, "y": 0.0},
             Candidate({"x": 1.0, "y": 1.0}, {"x": 1.0, "y": 1.0}, Shout())]
    results, passes_made = {}, {}

    class Counted(MixedLoRA):
        def rows(self, weights):
            passes_made[self.tag] = passes_made.get(self.tag, 0) + 1
            return super().rows(weights)

    for name, passes in (("alone", None), ("mixed", "on"), ("resumed", "on")):
        combined = CombinedModel(copy.deepcopy(tiny_llama), adapters)
        store = RunStore(tmp_path / name)
        p = Passes(Counted(combined.model, adapters), rows=5, points=4) if passes else None
        if p:
            p.mixed.tag = name
        ctx = SweepContext(rewards, GenerationSettings(max_new_tokens=5, batch_size=2), store, bootstrap=200, passes=p)
        run = lambda cs, ctx=ctx, combined=combined: evaluate_points(  # noqa: E731
            ctx, combined, tokenizer, cs, method="mva", split="val", prompts=PROMPTS, progress=False)
        if name == "resumed":
            run(cands[2:5])  # a pass of three points stored, the rest not
        results[name] = [(r.label, r.rewards, r.responses, r.flag) for r in run(cands)]
    assert results["mixed"] == results["alone"] == results["resumed"]
    assert len({tuple(r[2]) for r in results["alone"]}) > 3  # the points really differ
    # generate calls: 10 batched points (the huge ω goes alone) in passes of 4, 4, 2 points × 4 prompts, 5 rows per
    # call: 4 + 4 + 2 calls; resumed: 3 points first (3 calls), then 4 + 3 points (4 + 3 calls)
    assert passes_made == {"mixed": 10, "resumed": 10}
