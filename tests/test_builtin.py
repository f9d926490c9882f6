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
