"""`mvalign judges ...`: check the measures of a config against people (`mvalign.audit`) and probe them."""

from __future__ import annotations

from pathlib import Path

import typer

from .cli_group import Group

judges_app = typer.Typer(cls=Group, no_args_is_help=True,
                         help="Measures of the values: audit them against human labels, probe them.")


def config_or_run(target: Path):
    """A run config (YAML), or a run directory's config.yaml."""
    from .config import ConfigError, load_config
    from .rundir import RunDir

    if target.is_dir():
        if not (target / "config.yaml").is_file():
            raise ConfigError(f"{target}: not a run directory (no config.yaml); give a config file or a run dir")
        return RunDir(target).load_config()
    return load_config(target)


@judges_app.command("audit")
def audit(target: Path = typer.Argument(..., help="Run config (YAML) or run directory.")) -> None:
    """Score every measure (primary, audits, train judge) on the human-labelled anchors; write RUN/audit.json and
    print one line per measure. Exit status 1 when a measure is untrusted (its interval's lower bound at or below
    audit.floor)."""
    from .audit import anchor_text, audit_config

    cfg = config_or_run(target)
    result = audit_config(cfg)
    for key, e in result["measures"].items():
        typer.echo(f"{key} ({e['role']}, {e['kind']}): {anchor_text(e)}")
    typer.echo(f"wrote {Path(cfg.run_dir) / 'audit.json'}")
    if any(e["trusted"] is False for e in result["measures"].values()):
        raise typer.Exit(1)


@judges_app.command("probe")
def probe(target: Path = typer.Argument(..., help="Run config (YAML) or run directory.")) -> None:
    """Run the contract probes on every measure of the config (what `mvalign run` does before any sweep)."""
    from .probes import run_probes
    from .rewards import load_audits, load_reward_models

    cfg = config_or_run(target)
    cfg.audit.probes = True
    measures = {**load_reward_models(cfg), **load_audits(cfg)}
    run_probes(cfg, measures)
    typer.echo(f"every measure passes its probes: {sorted(measures)}")
