"""Reliability round 3 (issue 33), the cases fixed so far: each a regression test that fails on the code before."""

from __future__ import annotations

import json
import socket

import pytest
import yaml
from typer.testing import CliRunner

from common import write_builtin_config
from mvalign.cli import app
from mvalign.config import ConfigError, RunConfig, load_config
from mvalign.rewards.base import CallableReward, RewardError

runner = CliRunner()


def test_view_out_never_overwrites_a_file_that_is_not_an_explorer_page(tmp_path):
    from mvalign.explorer import check_page_destination

    precious = tmp_path / "store.sqlite"
    precious.write_bytes(b"SQLite format 3\x00 data")
    with pytest.raises(ConfigError, match="exists and is not an explorer page; it is kept"):
        check_page_destination(precious)
    assert precious.read_bytes() == b"SQLite format 3\x00 data"
    page = tmp_path / "explorer.html"
    page.write_text("<!DOCTYPE html>\n<html><head><title>mvalign front explorer</title>")
    check_page_destination(page)  # an earlier page is ours to replace
    (tmp_path / "link.html").symlink_to(page)
    with pytest.raises(ConfigError, match="symbolic link"):
        check_page_destination(tmp_path / "link.html")
    with pytest.raises(ConfigError, match="is a folder"):
        check_page_destination(tmp_path)


def test_racing_off_written_as_in_the_readme_is_read_as_off(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("values: []\nsweep:\n  racing: off\n")  # YAML 1.1 reads the bare word as false
    assert load_config(path).sweep.racing == "off"
    path.write_text("values: []\nsweep:\n  racing: on\n")
    assert load_config(path).sweep.racing == "on"


def test_a_callable_judge_that_raises_or_returns_a_non_number_is_one_line():
    def boom(prompt, response):
        raise KeyError("no such thing")

    def text(prompt, response):
        return "very good" if response == "b" else 1.0

    with pytest.raises(RewardError, match=r"callable judge 'helpful' .*boom.* raised KeyError: 'no such thing' on item 0"):
        CallableReward(boom, "helpful").score(["p"], ["a"])
    with pytest.raises(RewardError, match=r"returned str 'very good', not a number on item 1 \(prompt 'q'\)"):
        CallableReward(text, "helpful").score(["p", "q"], ["a", "b"])


def test_pick_weights_naming_an_unknown_value_is_one_line():
    from mvalign.pick import make_target

    with pytest.raises(ConfigError, match=r"--weights: \['honest'\] not a value of this run"):
        make_target(["helpful", "harmless"], None, [], {"helpful": 1.0, "honest": 1.0})


def test_a_grid_that_would_enumerate_millions_of_candidates_is_refused_at_load():
    values = [{"name": f"v{i}", "data": {"format": "builtin", "value": "helpful"}} for i in range(7)]
    with pytest.raises(ValueError, match=r"sweep.grid: 10 weights per value and 7 values make 10,000,000 grid points"):
        RunConfig.model_validate({"values": values})
    RunConfig.model_validate({"values": values, "sweep": {"strategy": "list", "points": [{"v0": 1.0}]}})


def test_serving_on_a_busy_or_invalid_port_is_one_line(tmp_path):
    from mvalign.explorer_server import make_server

    page = tmp_path / "explorer.html"
    page.write_text("<title>mvalign front explorer</title>")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match=rf"--port {s.getsockname()[1]}: in use"):
            make_server(page, s.getsockname()[1], [])
    with pytest.raises(ConfigError, match="--port 70000: not a TCP port"):
        make_server(page, 70000, [])


def test_report_covers_every_method_escapes_names_and_cards_use_the_runs_reference(tmp_path, tiny_model_dir):
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep={"grid": [1.0], "val_prompts": 4,
                                                                    "test_prompts": 3, "max_new_tokens": 4})
    cfg = yaml.safe_load(path.read_text())
    run = tmp_path / "run"
    for method in ("mva", "dpo"):  # one method per invocation
        r = runner.invoke(app, ["run", str(path), "--method", method])
        assert r.exit_code == 0, r.output
    report = (run / "report.md").read_text()
    assert "## mva" in report and "## dpo" in report, "the report must cover both methods"
    front = json.loads((run / "front-mva.json").read_text())
    (run / "front-a|b<i>x*.json").write_text(json.dumps(front))
    r = runner.invoke(app, ["report", str(run)])
    assert r.exit_code == 0, r.output
    report = (run / "report.md").read_text()
    assert "a\\|b\\<i\\>x\\*" in report and "<i>" not in report
    exported = runner.invoke(app, ["combine", str(run), "--method", "mva", "--weights", "helpful=1,harmless=1",
                                   "--format", "peft", "--out", str(tmp_path / "out")])
    assert exported.exit_code == 0, exported.output
    card = (tmp_path / "out" / "README.md").read_text()
    ref = report.split("One reference point for every hypervolume below: ")[1].split(" ")[0]
    assert f"against the run's one reference point {ref}" in card.replace(", ", ",").replace(",", ", ")
    assert str(tmp_path) not in card and cfg["run_dir"] == "run"
