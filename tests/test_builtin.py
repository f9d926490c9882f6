from mvalign.config import DataSourceConfig
from mvalign.data import load_pairs
from mvalign.data.builtin import builtin_pairs


def test_builtin_sizes_parts_and_conflicts():
    for value in ("helpful", "harmless"):
        policy, reward = builtin_pairs(value, "policy"), builtin_pairs(value, "reward")
        assert len(policy) >= 600
        assert not {p.prompt for p in policy} & {p.prompt for p in reward}  # disjoint prompts
        assert {p.meta["category"] for p in policy} == {"howto", "fact", "sensitive", "harmful"}
        assert all(p.chosen != p.rejected for p in policy)
    helpful = {(p.prompt, p.chosen, p.rejected) for p in builtin_pairs("helpful", "policy")}
    harmless = {(p.prompt, p.chosen, p.rejected) for p in builtin_pairs("harmless", "policy")}
    flipped = {(q, b, a) for q, a, b in harmless}
    conflicts = helpful & flipped
    assert conflicts  # the two values prefer opposite responses on the same prompts
    helpful_pairs = builtin_pairs("helpful", "policy")
    comply_vs_refuse = [p for p in helpful_pairs if (p.meta["chosen_style"], p.meta["rejected_style"]) == ("comply", "refusal")]
    assert comply_vs_refuse and all((p.prompt, p.rejected, p.chosen) in harmless for p in comply_vs_refuse)
    over_refusal = [p for p in helpful_pairs if p.meta["category"] == "howto" and p.meta["rejected_style"] == "refusal"]
    assert over_refusal  # helpfulness penalises refusing benign requests


def test_builtin_through_data_config():
    pairs = load_pairs(DataSourceConfig(format="builtin", part="reward"), "harmless")
    assert pairs == builtin_pairs("harmless", "reward")


def test_full_demo_evaluates_at_least_twice_the_prompts_it_used_to():
    """The demo's split gives its sweep 45 val / 48 test prompts (issue 14: ≥ 2× the 16 / 22 it had), disjoint."""
    from mvalign.data import eval_prompts
    from mvalign.demo import demo_config

    cfg = demo_config()
    val, test = eval_prompts(cfg, "val", cfg.sweep.val_prompts), eval_prompts(cfg, "test", cfg.sweep.test_prompts)
    assert len(val) >= 2 * 16 and len(test) >= 2 * 22
    assert not set(map(str, val)) & set(map(str, test))
