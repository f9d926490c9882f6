"""The `mvalign` command line: each command parses its arguments, makes one library call and prints the result.

Every user error (`mvalign.errors.MvalignError`: bad config, data, adapters, model, judges, run directory) is
turned into one line `error: ...` and exit status 1 by the group's single handler; `--verbose` also prints the
traceback and logs at INFO level.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Literal

import typer

from .cli_group import STATE, Group, check_methods
from .cli_judges import judges_app, labels_app
from .cli_serve import serve, view

METHOD_HELP = "See `mvalign methods` for what each one trains and evaluates."
app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True,
                  help="Align a causal LM with several values at once.")
reward_app = typer.Typer(cls=Group, no_args_is_help=True, help="Reward models: train BT heads, evaluate them.")
app.add_typer(reward_app, name="reward")
app.add_typer(judges_app, name="judges")
app.add_typer(labels_app, name="labels")
app.command()(view)
app.command()(serve)


def _echo_json(rows) -> None:
    for row in rows:
        typer.echo(json.dumps(row))


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level; show tracebacks of errors."),
) -> None:
    STATE["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@app.command("config")
def config_cmd(
    show: bool = typer.Option(False, "--show", help="Print the default config with every field documented."),
    check: Path | None = typer.Option(None, "--check", help="Validate a config file and print it resolved."),
) -> None:
    """Show the default configuration, or validate a config file."""
    from .config import RunConfig, describe_defaults, load_config
    from .methods import method_blocks

    if check is not None:
        typer.echo(json.dumps(load_config(check).model_dump(mode="json"), indent=2))
    elif show:
        typer.echo(describe_defaults(method_blocks(RunConfig())))
    else:
        typer.echo("use --show to print the defaults or --check FILE to validate a config")


@app.command("methods")
def methods_cmd(
    update: Path | None = typer.Option(None, "--update", help="Rewrite the table between the generated-table markers "
                                       "of this Markdown file (the README) instead of printing it."),
) -> None:
    """List the methods: what each trains and evaluates, its source and the config it reads (Markdown)."""
    from .methods import methods_table, update_methods_table

    typer.echo(methods_table() if update is None else
               f"{update}: {'updated' if update_methods_table(update) else 'already up to date'}")


@app.command()
def data(config: Path = typer.Argument(..., help="Run config (YAML).")) -> None:
    """Load every value's data and print pair counts per split (validates the data sources)."""
    from .config import load_config
    from .data import split_counts

    for value, counts in split_counts(load_config(config)).items():
        typer.echo(f"{value}: " + ", ".join(f"{k}={n}" for k, n in counts.items()))


@app.command()
def train(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    value: list[str] | None = typer.Option(None, "--value", help="Value to train (repeat for several; default: all)."),
    method: str = typer.Option("dpo", "--method", callback=check_methods, help="What to train. " + METHOD_HELP),
    force: bool = typer.Option(False, "--force", help="Retrain even when the run already holds this adapter."),
) -> None:
    """Train a method's LoRA adapters (resumes from checkpoints, skips finished adapters)."""
    from accelerate import PartialState

    from .config import load_config
    from .methods import train_method

    records = train_method(load_config(config), method, value or (), force=force)
    if not PartialState().is_main_process:  # a multi-process launch: one report, from the main process
        return
    for rec in records:
        typer.echo(json.dumps({"method": rec.group, "value": rec.name, "adapter": rec.adapter_dir, "steps": rec.steps,
                               "train_pairs": rec.train_pairs, "seconds_per_step": round(rec.seconds_per_step, 3),
                               **rec.metrics}))


@app.command()
def combine(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory holding adapters/<method>/<value>/."),
    weights: str = typer.Option(..., "--weights", help="Weights per value, e.g. helpful=0.8,harmless=1.2 (any real numbers)."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the export."),
    fmt: Literal["merged", "peft"] = typer.Option(
        "merged", "--format", help="'merged': a full checkpoint; 'peft': ONE LoRA adapter of rank Σ r_k (exact)."),
    mode: Literal["exact", "factorwise"] = typer.Option(
        "exact", "--mode", help="'exact' (W0 + Σ ω s B A) or 'factorwise' (reference soups only; merged format)."),
    method: str | None = typer.Option(None, "--method", callback=check_methods,
                                         help="Which method's vectors (default: the only one, else mva)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
    hub: str | None = typer.Option(None, "--push-to-hub", help="Also upload the export to this Hub model repo."),
) -> None:
    """Export W0 + Σ ω_k ΔW_k as a merged checkpoint or one PEFT adapter, with a model card (README.md)."""
    from .export import combine_run

    typer.echo(f"wrote {combine_run(run, weights, out, mode, method, fmt, overwrite, _command(ctx), hub)}")


def _command(ctx: typer.Context) -> str:
    """The command line that made an export, for its model card (rebuilt from the parsed options when mvalign was
    not started as the `mvalign` script, e.g. from Python)."""
    if Path(sys.argv[0]).name == "mvalign":
        return " ".join(["mvalign", *sys.argv[1:]])
    shown = [f"--{k.replace('_', '-')}={v}" for k, v in ctx.params.items() if v not in (None, False, (), [])]
    return " ".join([ctx.command_path, *shown])


@app.command()
def pick(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory with evaluated fronts."),
    maximize: str | None = typer.Option(None, "--maximize", help="The value to make as high as possible."),
    require: list[str] | None = typer.Option(
        None, "--require", help="Constraint, repeatable: harmless>=base, helpful>=base+0.2, harmless>=0.5 (or <=)."),
    weights: str | None = typer.Option(
        None, "--weights", help="Instead of --maximize: maximise Σ w_k r_k, e.g. helpful=0.7,harmless=0.3."),
    method: list[str] | None = typer.Option(None, "--method", callback=check_methods,
                                            help="Only these methods' points (repeatable; default: every front)."),
    refine: int = typer.Option(0, "--refine", min=0, help="Evaluate up to N new ω near the best point (weight combinations)."),
    export: Path | None = typer.Option(None, "--export", help="Export the chosen point to this folder (when feasible)."),
    fmt: Literal["merged", "peft"] = typer.Option("peft", "--format", help="Export format (see `mvalign combine`)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --export folder."),
    hub: str | None = typer.Option(None, "--push-to-hub", help="Also upload the export to this Hub model repo."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as one JSON object."),
    allow_disputed: bool = typer.Option(False, "--allow-disputed", help="Let a point whose measures dispute its gain "
                                        "in a value satisfy a constraint on that value (the model card says so)."),
    preset: str | None = typer.Option(None, "--save-preset", help="Save the chosen ω as a named trade-off that "
                                      "`mvalign serve` offers (a model id in /v1/models)."),
) -> None:
    """Choose the trade-off that meets value targets: selected on val, reported on test with intervals and the
    probability the constraints hold. Exit status 3 when the targets are not achievable (the closest point is
    reported with each target's miss)."""
    from .export import combine_run, parse_weights
    from .pick import describe, pick_run

    answer = pick_run(run, maximize, require or (), parse_weights(weights) if weights else None, method or (), refine,
                      allow_disputed=allow_disputed)
    if export is not None and answer["feasible"]:
        if not answer["exportable"]:
            from .config import ConfigError

            raise ConfigError(f"--export: {answer['method']}'s models are not weight combinations of value vectors "
                              "(per-weight models, stages, prompt steering or decode-time fusion)")
        answer["export"] = str(combine_run(run, answer["weights"], export, "exact", answer["vectors"], fmt, overwrite,
                                           _command(ctx), hub))
    if preset is not None and answer["feasible"] and answer["exportable"]:
        from .serve import save_preset

        save_preset(run, preset, answer["method"], answer["weights"])
        answer["preset"] = preset
    if as_json:
        typer.echo(json.dumps(answer))
    else:
        typer.echo(describe(answer))
    if not answer["feasible"]:
        raise typer.Exit(3)


@app.command()
def diagnose(
    run: Path = typer.Argument(..., help="Run directory."),
    method: str | None = typer.Option(
        None, "--method", callback=check_methods, help="Which method's vectors (default: every method trained)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default RUN/diagnostics)."),
) -> None:
    """Interference between value vectors: cosine and HSIC/CKA per layer and overall, as JSON and a PNG heat map."""
    from .diagnose import diagnose_methods

    for json_path, png, report in diagnose_methods(run, method, out):
        for p in report["pairs"]:
            o = p["overall"]
            typer.echo(json.dumps({"method": report["method"], "a": p["a"], "b": p["b"], "cos": round(o["cos"], 4),
                                   "mean_abs_cos": round(o["mean_abs_cos"], 4), "cka": round(o["cka"], 4)}))
        typer.echo(f"wrote {json_path} and {png}")


@reward_app.command("train")
def reward_train(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    value: list[str] | None = typer.Option(None, "--value", help="Value whose BT head to train (default: all bt-head values)."),
    force: bool = typer.Option(False, "--force", help="Retrain an existing head."),
) -> None:
    """Train the Bradley–Terry reward head of each value on its reward data; prints held-out pair accuracy."""
    from .config import load_config
    from .rewards import train_rewards

    keys = ("value", "train_pairs", "val_pairs", "train_accuracy", "val_accuracy")
    _echo_json({k: meta[k] for k in keys} for meta in train_rewards(load_config(config), value or (), force))


@reward_app.command("eval")
def reward_eval(config: Path = typer.Argument(..., help="Run config (YAML).")) -> None:
    """Pair accuracy of every value's reward model on every value's held-out (val) DPO pairs: the diagonal says how
    well each judge agrees with its own value's labels, the rest how the values relate."""
    from .config import load_config
    from .rewards import judge_accuracy

    _echo_json(judge_accuracy(load_config(config)))


@app.command()
def consistency(config: Path = typer.Argument(..., help="Run config (YAML) with a reward model per value.")) -> None:
    """Score every value's training pairs with all reward models; print VC diagnostics and kept counts; write
    RUN/consistency/summary.json and consistency.png."""
    from .config import load_config
    from .consistency import consistency_report
    from .methods import get_method, prepare_run

    cfg = load_config(config)
    rows, png = consistency_report(cfg, prepare_run(cfg), get_method("vcsoup").options(cfg))
    _echo_json({"value": v, **{k: x for k, x in row.items() if k != "stats"}} for v, row in rows.items())
    typer.echo(f"wrote {png}")


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Run config (YAML)."),
    method: list[str] | None = typer.Option(None, "--method", callback=check_methods,
                                               help="Methods to run, repeatable (default: mva). " + METHOD_HELP),
    no_probes: bool = typer.Option(False, "--no-probes", help="Skip the measures' contract probes (mvalign.probes)."),
) -> None:
    """The whole pipeline: reward heads → adapters → sweep → Pareto front → report (resumable)."""
    from .config import load_config
    from .pipeline import run_pipeline

    cfg = load_config(config)
    if no_probes:
        cfg.audit.probes = False
    typer.echo(json.dumps(run_pipeline(cfg, tuple(method or ("mva",))), indent=2))


@app.command()
def demo(
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (about 2 minutes); the full demo takes about 10."),
    run_dir: Path = typer.Option(Path("runs/demo"), "--run-dir", help="Where the demo run goes."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the demo's config as YAML and exit."),
) -> None:
    """MVA end to end on the embedded SmolLM2 and the built-in helpful/harmless dataset."""
    from .demo import demo_config, run_demo

    if show_config:
        import yaml

        typer.echo(yaml.safe_dump(demo_config(quick, str(run_dir)).model_dump(mode="json"), sort_keys=False))
        return
    summary = run_demo(quick, run_dir)
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"report: {summary['report']}")
    typer.echo(f"explorer: {summary['explorer']} (open it in a browser, or `mvalign view {summary['run_dir']} --serve`)")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run directories with evaluated fronts (e.g. one per seed)."),
    method: list[str] | None = typer.Option(
        None, "--method", callback=check_methods, help="Only these methods (repeatable; default: all)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: the first run)."),
    reference: str | None = typer.Option(None, "--reference", help="Reference point, comma-separated, one per value."),
) -> None:
    """One table over methods and runs: test hypervolume (one shared reference point), non-dominated points, best
    reward per value, points beating the base, training compute; plus a combined front plot."""
    from .compare import compare_runs, markdown

    table, paths = compare_runs(runs, method or (), out, reference)
    typer.echo(markdown(table))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run directory with evaluated fronts."),
    out: Path | None = typer.Option(None, "--out", help="Write the report here instead (e.g. the run is read-only)."),
) -> None:
    """Rewrite report.md and its PNGs from the run's front-<method>.json files."""
    from .report import report_run
    from .rundir import RunDir

    typer.echo(f"wrote {report_run(RunDir(run), out)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
