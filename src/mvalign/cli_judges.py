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
    from .labels import people_text

    for key, e in result["measures"].items():
        people = f"; vs this run's labels: {people_text(e['people'])}" if e.get("people") else ""
        typer.echo(f"{key} ({e['role']}, {e['kind']}): {anchor_text(e)}{people}")
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


labels_app = typer.Typer(cls=Group, no_args_is_help=True,
                         help="A person's verdicts on a run's responses (labelled in the explorer, mvalign.labels).")


@labels_app.command("import")
def import_cmd(run: Path = typer.Argument(..., help="Run directory."),
               file: Path = typer.Argument(..., help="Labels downloaded from the explorer page (JSONL).")) -> None:
    """Append the file's labels to RUN/labels.jsonl (labels already there, by id, are skipped). A bad line is named
    as file:line and skipped, the good ones are imported; exit status 1 when there was one."""
    from .labels import import_labels
    from .rundir import RunDir

    added, present, bad = import_labels(RunDir(run), file)
    typer.echo(f"imported {added} labels ({present} already in the run) into {run / 'labels.jsonl'}")
    if bad:
        typer.secho(f"error: {len(bad)} bad line(s) skipped; first: {bad[0]}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@labels_app.command("show")
def show_cmd(run: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Each measure's agreement with the run's labels (κ and accuracy with intervals), one line per measure."""
    from .labels import agreement_with_people, people_text
    from .rundir import RunDir

    for key, entry in agreement_with_people(RunDir(run)).items():
        typer.echo(f"{key}: {people_text({**entry, 'shown': True})}")
