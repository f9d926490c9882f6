"""The `mvalign` command line."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Align a causal LM with several values at once.")


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[Exception], ...]:
    from .combine import AdapterError
    from .config import ConfigError
    from .data import DataError
    from .models import ModelLoadError
    from .rewards.base import RewardError

    return (AdapterError, ConfigError, DataError, ModelLoadError, RewardError)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@app.command("config")
def config_cmd(
    show: bool = typer.Option(False, "--show", help="Print the default config with every field documented."),
    check: Optional[Path] = typer.Option(None, "--check", help="Validate a config file and print it resolved."),
) -> None:
    """Show the default configuration, or validate a config file."""
    from .config import describe_defaults, load_config

    if check is not None:
        try:
            cfg = load_config(check)
        except _user_errors() as e:
            _fail(e)
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
    elif show:
        typer.echo(describe_defaults())
    else:
        typer.echo("use --show to print the defaults or --check FILE to validate a config")


@app.command()
def data(config: Path = typer.Argument(..., help="Run config (YAML).")) -> None:
    """Load every value's data and print pair counts per split (validates the data sources)."""
    from .config import load_config
    from .data import load_value_splits

    try:
        cfg = load_config(config)
        for v in cfg.values:
            s = load_value_splits(v.data, v.name, cfg.split.seed, cfg.split.train, cfg.split.val)
            typer.echo(f"{v.name}: " + ", ".join(f"{k}={len(p)}" for k, p in s.items()))
    except _user_errors() as e:
        _fail(e)


@app.command()
def train(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    value: Optional[list[str]] = typer.Option(None, "--value", help="Value to train (repeat for several; default: all)."),
    method: str = typer.Option("dpo", "--method", help="dpo: independent vectors; mva: each later vector decorrelated "
                               "(HSIC/CKA) against the earlier, frozen ones; mva-orth: the same with orthogonality; "
                               "vcsoup: independent vectors on value-consistency-filtered pairs; seqt: DPO on each "
                               "value in turn, continuing; lw / modpo: one model per baselines.weights entry; soup, "
                               "mva-nohsic (dpo vectors) and mva-convex (mva vectors) train their source's vectors."),
    force: bool = typer.Option(False, "--force", help="Retrain even when the run already holds this vector."),
) -> None:
    """Train LoRA value vectors with DPO (resumes from checkpoints, skips finished vectors)."""
    from .config import load_config
    from .training import train_method

    try:
        cfg = load_config(config)
        for rec in train_method(cfg, method, value or (), force=force):
            summary = {"method": rec.method, "value": rec.value, "adapter": rec.adapter_dir, "steps": rec.steps, "train_pairs": rec.train_pairs,
                       "seconds_per_step": round(rec.seconds_per_step, 3), **rec.metrics}
            typer.echo(json.dumps(summary))
    except _user_errors() as e:
        _fail(e)


@app.command()
def combine(
    run: Path = typer.Argument(..., help="Run directory holding adapters/<value>/."),
    weights: str = typer.Option(..., "--weights", help="Weights per value, e.g. helpful=0.8,harmless=1.2 (any real numbers)."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged Hugging Face checkpoint."),
    mode: str = typer.Option("exact", "--mode", help="'exact' (W0 + Σ ω s B A) or 'factorwise' (reference soups only)."),
    method: Optional[str] = typer.Option(None, "--method", help="Which method's vectors (default: the only one, else mva)."),
) -> None:
    """Write the model W0 + Σ ω_k ΔW_k as a checkpoint that AutoModelForCausalLM.from_pretrained loads."""
    from .run import combine_run, parse_weights

    try:
        path = combine_run(run, parse_weights(weights), out, mode, method)
    except _user_errors() as e:
        _fail(e)
    typer.echo(f"wrote {path}")


@app.command()
def diagnose(
    run: Path = typer.Argument(..., help="Run directory."),
    method: Optional[str] = typer.Option(None, "--method", help="Which method's vectors (default: every method trained)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/diagnostics)."),
) -> None:
    """Interference between value vectors: cosine and HSIC/CKA per layer and overall, as JSON and a PNG heat map."""
    from .config import ConfigError
    from .diagnose import diagnose_run
    from .run import trained_methods

    try:
        methods = [method] if method else trained_methods(run)
        if not methods:
            raise ConfigError(f"{run}: no trained value vectors; run `mvalign train` first")
        for m in methods:
            json_path, png, report = diagnose_run(run, m, out)
            for p in report["pairs"]:
                o = p["overall"]
                typer.echo(json.dumps({"method": m, "a": p["a"], "b": p["b"], "cos": round(o["cos"], 4),
                                       "mean_abs_cos": round(o["mean_abs_cos"], 4), "cka": round(o["cka"], 4)}))
            typer.echo(f"wrote {json_path} and {png}")
    except _user_errors() as e:
        _fail(e)


reward_app = typer.Typer(no_args_is_help=True, help="Reward models: train BT heads, evaluate them.")
app.add_typer(reward_app, name="reward")


@reward_app.command("train")
def reward_train(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    value: Optional[list[str]] = typer.Option(None, "--value", help="Value whose BT head to train (default: all bt-head values)."),
    force: bool = typer.Option(False, "--force", help="Retrain an existing head."),
) -> None:
    """Train the Bradley–Terry reward head of each value on its reward data; prints held-out pair accuracy."""
    from .config import load_config
    from .rewards import train_reward

    try:
        cfg = load_config(config)
        names = value or [v.name for v in cfg.values if v.reward and v.reward.kind == "bt-head"]
        for name in names:
            meta = train_reward(cfg, name, force=force)
            typer.echo(json.dumps({k: meta[k] for k in ("value", "train_pairs", "val_pairs", "train_accuracy", "val_accuracy")}))
    except _user_errors() as e:
        _fail(e)


@reward_app.command("eval")
def reward_eval(config: Path = typer.Argument(..., help="Run config (YAML).")) -> None:
    """Pair accuracy of every value's reward model on every value's held-out (val) DPO pairs: the diagonal says how
    well each judge agrees with its own value's labels, the rest how the values relate."""
    import numpy as np

    from .config import load_config
    from .data import load_value_splits
    from .rewards import load_reward_models

    try:
        cfg = load_config(config)
        models = load_reward_models(cfg)
        for v in cfg.values:
            pairs = load_value_splits(v.data, v.name, cfg.split.seed, cfg.split.train, cfg.split.val)["val"]
            prompts = [p.prompt for p in pairs]
            row = {"data": v.name, "pairs": len(pairs)}
            for name, rm in models.items():
                row[name] = float(np.mean(rm.score(prompts, [p.chosen for p in pairs]) > rm.score(prompts, [p.rejected for p in pairs])))
            typer.echo(json.dumps(row))
    except _user_errors() as e:
        _fail(e)


@app.command()
def consistency(config: Path = typer.Argument(..., help="Run config (YAML) with a reward model per value.")) -> None:
    """Score every value's training pairs with all reward models; print VC diagnostics and kept counts; write
    RUN/consistency/summary.json and consistency.png."""
    from .config import load_config
    from .consistency import consistency_for_value, plot_consistency, select, summary
    from .data import load_value_splits
    from .rewards import load_reward_models
    from .run import prepare_run_dir

    try:
        cfg = load_config(config)
        run = prepare_run_dir(cfg)
        c = cfg.consistency
        rewards = load_reward_models(cfg)
        results, rows = {}, {}
        for v in cfg.values:
            pairs = load_value_splits(v.data, v.name, cfg.split.seed, cfg.split.train, cfg.split.val)["train"]
            results[v.name] = consistency_for_value(cfg, v.name, pairs, rewards)
            keep, _ = select(results[v.name]["vc"], c.mode, c.tau, c.quantile)
            rows[v.name] = {**summary(results[v.name]), "mode": c.mode, "tau": c.tau, "kept": int(len(keep)),
                            "stats": results[v.name]["stats"]}
            typer.echo(json.dumps({"value": v.name, **{k: x for k, x in rows[v.name].items() if k != "stats"}}))
        (run / "consistency" / "summary.json").write_text(json.dumps(rows, indent=2))
        typer.echo(f"wrote {plot_consistency(results, run / 'consistency' / 'consistency.png')}")
    except _user_errors() as e:
        _fail(e)


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    method: Optional[list[str]] = typer.Option(None, "--method", help="Methods to run, repeatable (default: mva): "
                                               "dpo mva mva-orth vcsoup seqt lw modpo soup mva-nohsic mva-convex."),
) -> None:
    """The whole pipeline: reward heads → value vectors → sweep → Pareto front → report (resumable)."""
    from .config import load_config
    from .pipeline import run_pipeline

    try:
        summary = run_pipeline(load_config(config), tuple(method or ("mva",)))
    except _user_errors() as e:
        _fail(e)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def demo(
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (about 2 minutes); the full demo takes about 10."),
    run_dir: Path = typer.Option(Path("runs/demo"), "--run-dir", help="Where the demo run goes."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the demo's config as YAML and exit."),
) -> None:
    """MVA end to end on the embedded SmolLM2 and the built-in helpful/harmless dataset."""
    import time

    import yaml

    from .demo import demo_config
    from .pipeline import run_pipeline

    run_dir = run_dir.resolve().with_name(run_dir.name + ("-quick" if quick else ""))
    cfg = demo_config(quick, str(run_dir))
    if show_config:
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return
    t0 = time.perf_counter()
    try:
        summary = run_pipeline(cfg)
    except _user_errors() as e:
        _fail(e)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run directories with evaluated fronts (e.g. one per seed)."),
    method: Optional[list[str]] = typer.Option(None, "--method", help="Only these methods (repeatable; default: all)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the first run)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Reference point, comma-separated, one per value."),
) -> None:
    """One table over methods and runs: test hypervolume (one shared reference point), non-dominated points, best
    reward per value, points beating the base, training compute; plus a combined front plot."""
    from .compare import compare as build, load_fronts, markdown, write_comparison
    from .config import ConfigError

    try:
        ref = [float(x) for x in reference.split(",")] if reference else None
        entries = load_fronts(runs, method or ())
        if ref is not None and len(ref) != len(entries[0]["front"]["values"]):
            raise ConfigError(f"--reference has {len(ref)} numbers; the fronts measure {entries[0]['front']['values']}")
        table = build(entries, ref)
        paths = write_comparison(table, out or runs[0])
    except ValueError as e:
        _fail(e)
    typer.echo(markdown(table))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command()
def report(run: Path = typer.Argument(..., help="Run directory with evaluated fronts.")) -> None:
    """Rewrite report.md and its PNGs from the run's front-<method>.json files."""
    from .config import ConfigError
    from .report import write_report

    fronts = {p.stem.removeprefix("front-"): json.loads(p.read_text()) for p in sorted(run.glob("front-*.json"))}
    if not fronts:
        _fail(ConfigError(f"{run}: no front-<method>.json; run `mvalign run` first"))
    typer.echo(f"wrote {write_report(run, fronts, {'run': str(run)})}")


if __name__ == "__main__":
    app()
