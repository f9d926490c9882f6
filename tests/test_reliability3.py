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


def test_report_covers_every_method_escapes_names_and_cards_use_the_runs_reference(tmp_path, tiny_model_dir, caplog):
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
    (run / "front-a|b<i>x*.json").write_text(json.dumps(front))  # not a method of this run: ignored, named
    r = runner.invoke(app, ["report", str(run)])
    assert r.exit_code == 0, r.output
    report = (run / "report.md").read_text()
    assert "a|b" not in report and "a\\|b" not in report and "## mva" in report
    assert "front-a|b<i>x*.json: no method 'a|b<i>x*'" in caplog.text
    exported = runner.invoke(app, ["combine", str(run), "--method", "mva", "--weights", "helpful=1,harmless=1",
                                   "--format", "peft", "--out", str(tmp_path / "out")])
    assert exported.exit_code == 0, exported.output
    card = (tmp_path / "out" / "README.md").read_text()
    ref = report.split("One reference point for every hypervolume below: ")[1].split(" ")[0]
    assert f"against the run's one reference point {ref}" in card.replace(", ", ",").replace(",", ", ")
    assert str(tmp_path) not in card and cfg["run_dir"] == "run"


def test_a_copied_run_uses_its_own_adapters_and_swapped_adapters_are_one_line(tmp_path, tiny_model_dir):
    import shutil

    from mvalign.rundir import RunDir
    from mvalign.store import AdapterRef

    original = tmp_path / "a"
    original.mkdir()
    path = write_builtin_config(original, tiny_model_dir, 8)
    assert runner.invoke(app, ["train", str(path), "--method", "dpo"]).exit_code == 0
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    # the original's adapters change after the copy: the copy must not read them (its store held absolute paths)
    first = original / "run" / "adapters" / "dpo" / "helpful" / "adapter_model.safetensors"
    first.write_bytes(first.read_bytes()[:-8] + b"\0" * 8)
    r = runner.invoke(app, ["train", str(copy / "config.yaml"), "--method", "mva"])
    assert r.exit_code == 0, r.output
    mine = copy / "run" / "adapters"
    assert (mine / "mva" / "helpful" / "adapter_model.safetensors").read_bytes() == \
        (mine / "dpo" / "helpful" / "adapter_model.safetensors").read_bytes()  # reused from this run's dpo vector
    rec = RunDir(copy / "run").store().get_vector(AdapterRef("dpo", "helpful"))
    assert rec.adapter_dir == str(copy / "run" / "adapters" / "dpo" / "helpful")

    # adapters swapped between values by hand: one line naming the folder, never a silent mix
    d = copy / "run" / "adapters" / "dpo"
    (d / "helpful").rename(d / "tmp")
    (d / "harmless").rename(d / "helpful")
    (d / "tmp").rename(d / "harmless")
    out = runner.invoke(app, ["combine", str(copy / "run"), "--method", "dpo", "--weights", "helpful=1,harmless=1",
                              "--out", str(tmp_path / "x")])
    assert out.exit_code == 1 and "holds the adapter trained as dpo/harmless" in out.output and "not dpo/helpful" \
        in out.output, out.output


def test_damaged_store_rows_and_foreign_stores_are_one_line(tmp_path):
    import sqlite3

    from mvalign.store import PointRecord, RunStore, StoreError

    store = RunStore(tmp_path)
    rec = PointRecord("mva", {"a": 1.0}, "val", "k", {"a": 0.5}, {"a": [0.4, 0.6]}, 3, 1.0, 0.1, {}, ["x", "y", "z"],
                      scores={"a": [0.1, 0.5, 0.9]})
    store.put_point(rec)
    assert store.points()[0].scores == rec.scores
    con = sqlite3.connect(tmp_path / "store.sqlite")
    for sql, match in [("UPDATE points SET scores = '{\"a\": [0.1, 0.5]}'", r"scores\['a'\] must list one score per prompt"),
                       ("UPDATE points SET rewards = '{\"a\": \"high\"}'", r"rewards\['a'\] is 'high', not a finite number"),
                       ("UPDATE points SET rewards = 'not json'", "damaged"),
                       ("UPDATE points SET weights = '[1, 2]'", "weights is list, not a mapping")]:
        con.execute(sql)
        con.commit()
        with pytest.raises(StoreError, match=match):
            store.points()
        store.put_point(rec)  # repaired by writing the row again
        con.execute("DELETE FROM points WHERE weights != ?", ('{"a": 1.0}',))
        con.commit()
    con.close()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    con = sqlite3.connect(foreign / "store.sqlite")
    con.execute("CREATE TABLE points (method TEXT, weights TEXT)")
    con.close()
    with pytest.raises(StoreError, match="table points lacks columns"):
        RunStore(foreign)


def test_hand_edited_fronts_are_one_line_naming_the_field():
    from mvalign.front import Front

    base = {"rewards": {"a": 0.0}, "ci95": {"a": [0, 0]}, "rewards_val": {"a": 0.0}, "scores": {"a": [0.0, 1.0]},
            "scores_val": {"a": [0.0, 1.0]}}
    good = {"values": ["a"], "reference_point": [0.0], "hypervolume": {"val": 0, "test": 0}, "base": base,
            "points": [{"method": "m", "weights": {"a": 1.0}, "split": "val", "rewards": {"a": 0.5},
                        "ci95": {"a": [0, 1]}, "pareto": True, "scores": {"a": [0.0, 1.0]}}]}
    Front.from_json(good, "m")
    for edit, match in [(lambda f: f["points"][0]["rewards"].update(a="high"), r"points\[0\].rewards\['a'\] is 'high'"),
                        (lambda f: f["points"][0]["rewards"].update(a=float("nan")), r"points\[0\].rewards\['a'\] is nan"),
                        (lambda f: f["points"][0].update(weights=[1.0]), r"points\[0\].weights is list"),
                        (lambda f: f.update(points=None), "points is NoneType, not a list"),
                        (lambda f: f["points"][0]["scores"].update(a=[1.0]), r"points\[0\].scores\['a'\] must list one")]:
        bad = json.loads(json.dumps(good))
        edit(bad)
        with pytest.raises(ConfigError, match=match):
            Front.from_json(bad, "m", "front-m.json")


def test_a_local_hf_reward_model_replaced_at_the_same_path_gets_a_new_identity(tmp_path):
    from mvalign.rewards.hf import folder_fingerprint

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a" * 1000)
    before = folder_fingerprint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"b" * 1000)  # same name, same size, other weights
    assert folder_fingerprint(str(tmp_path)) != before and folder_fingerprint("org/hub-model") == ""


def test_a_grid_of_zeros_or_all_zero_points_is_refused_at_load():
    values = [{"name": v, "data": {"format": "builtin", "value": v}} for v in ("helpful", "harmless")]
    with pytest.raises(ValueError, match=r"sweep.grid: every weight is 0 \(\[0.0\]\), so every candidate is the base"):
        RunConfig.model_validate({"values": values, "sweep": {"grid": [0.0]}})
    with pytest.raises(ValueError, match="sweep.points: every point is all zeros"):
        RunConfig.model_validate({"values": values, "sweep": {"strategy": "list", "points": [{"helpful": 0.0}]}})
    RunConfig.model_validate({"values": values, "sweep": {"grid": [0.0, 1.0]}})


def test_a_symlink_in_the_run_dir_is_replaced_never_written_through(tmp_path, tiny_model_dir):
    path = write_builtin_config(tmp_path, tiny_model_dir, 8)
    assert runner.invoke(app, ["train", str(path), "--method", "dpo"]).exit_code == 0
    adapter = tmp_path / "run" / "adapters" / "dpo" / "helpful"
    train = tmp_path / "run" / "train" / "dpo" / "helpful"
    outside = {}
    for name, folder in (("adapter", adapter), ("train", train)):
        outside[name] = tmp_path / f"outside-{name}"
        folder.rename(outside[name])
        folder.symlink_to(outside[name])
    before = {n: {p.name: p.read_bytes() for p in d.rglob("*") if p.is_file()} for n, d in outside.items()}
    r = runner.invoke(app, ["train", str(path), "--method", "dpo", "--force"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert not adapter.is_symlink() and (adapter / "adapter_model.safetensors").is_file() and not train.is_symlink()
    assert {n: {p.name: p.read_bytes() for p in d.rglob("*") if p.is_file()} for n, d in outside.items()} == before


class _Payload:
    """A pickle that would create a file when unpickled (what an attacker plants)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.target}",)


def test_planted_pickles_are_refused_with_one_line_and_never_run(tmp_path, tiny_model_dir):
    import shutil

    import torch
    from safetensors.torch import save_file

    from mvalign.config import ModelConfig
    from mvalign.lora import AdapterError, attached
    from mvalign.models import ModelLoadError, load_model
    from mvalign.train.trainer import CheckpointError, _load_checkpoint

    ran = tmp_path / "payload-ran"
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    save_file({}, str(ckpt / "trainable.safetensors"))
    (ckpt / "state.json").write_text('{"step": 1}')
    torch.save({"optimizer": _Payload(ran)}, ckpt / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"optimizer.pt: not an optimizer state mvalign wrote .*delete"):
        _load_checkpoint(ckpt, torch.nn.Linear(2, 2), None, None, "any digest")
    assert not ran.exists()

    pickled = tmp_path / "pickled-model"  # a model folder offering only pytorch_model.bin
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"x": _Payload(ran)}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"no safetensors weights .* never unpickles weights such as pytorch_model.bin"):
        load_model(ModelConfig(name=str(pickled)))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    torch.save({"x": _Payload(ran)}, adapter / "adapter_model.bin")
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"), attached(torch.nn.Linear(2, 2), adapter):
        pass
    assert not ran.exists()


def test_a_damaged_page_in_the_store_or_the_score_cache_is_one_line(tmp_path):
    from mvalign.rewards.base import RewardError, ScoreCache
    from mvalign.store import PointRecord, RunStore, StoreError

    store = RunStore(tmp_path)
    for i in range(60):  # several pages
        store.put_point(PointRecord("mva", {"a": float(i)}, "val", "k", {"a": 0.5}, {"a": [0.4, 0.6]}, 3, 1.0, 0.1,
                                    {}, ["x" * 200] * 3, scores={"a": [0.1, 0.5, 0.9]}))
    cache = ScoreCache(tmp_path / "scores.sqlite")
    with cache._connect() as con:
        con.executemany("INSERT INTO scores VALUES (?, ?)", [(f"{i:064d}", 0.5) for i in range(2000)])
    for path in (store.path, cache.path):
        data = bytearray(path.read_bytes())
        data[4096:] = b"Z" * (len(data) - 4096)  # every page after the first: the header still says SQLite
        path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"store.sqlite: .*malformed.*move the file aside"):
        store.points()
    with pytest.raises(RewardError, match=r"scores.sqlite: the score cache is damaged .*delete it"), cache._connect() as con:
        con.execute("SELECT count(*) FROM scores WHERE score > 0").fetchall()
