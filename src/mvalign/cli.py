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

    return (AdapterError, ConfigError, DataError, ModelLoadError)


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
                               "(HSIC/CKA) against the earlier, frozen ones."),
    force: bool = typer.Option(False, "--force", help="Retrain even when the run already holds this vector."),
) -> None:
    """Train LoRA value vectors with DPO (resumes from checkpoints, skips finished vectors)."""
    from .config import load_config
    from .run import train_method

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


if __name__ == "__main__":
    app()
