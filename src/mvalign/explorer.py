"""The front explorer: one self-contained `explorer.html` per run (or set of runs) that shows every evaluated point,
each method's non-dominated front, the base model, the paired change from the base, and what each model said.

Data comes from the run only: its front-<method>.json files (points, fronts, per-prompt scores, paired changes) and
its store (each point's responses). The page embeds plotly's offline bundle (from the `plotly` package) and the
data, so it opens from a file:// URL with no network. Served on 127.0.0.1 only, for convenience.

Payload (what the page reads; strings are deduplicated into one table, referenced by index):
  {"strings": [...], "runs": [{"name", "root", "values", "judges": {value: judge_quality | None},
    "reference_point", "methods": [{"name", "hv_test", "settings", "prompts": {split: [sid]}, "base": {split:
    {"rewards", "ci95", "scores", "responses"}}, "points": [{"id", "split", "weights", "rewards", "ci95", "pareto",
    "flag", "scores", "vs_base", "disputed", "settings_key", "responses", "raced_out"?}], "agreement"}], "measures":
    {key: {"value", "role", "measure", "kind", "anchor", "trusted", "people", "people_shown"}}, "labels": [label]}]}
Audit measures ('<value>:<measure>') sit beside the values in rewards, scores and vs_base; `disputed` lists the
values whose primary and audit measures moved in opposite directions with confidence (`mvalign.agreement`).
A point with `raced_out: n` is a candidate that racing dropped after the first n val prompts: its means, scores and
paired change cover those n prompts only (the front's `racing.dropped`).
`vs_base[v]` = paired difference mean(sᵢ(point) − sᵢ(base)) over the split's prompts with its paired bootstrap 95%
interval (`mvalign.stats.paired_difference`); `scores[v][i]` is prompt i's score, so the page's per-prompt Δ is
`scores[v][i] − base.scores[v][i]`. Prompts and base are per method: methods of one run may have been evaluated
with different settings (e.g. more val prompts later).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from http.server import ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

from .config import ConfigError
from .data import eval_prompts
from .errors import write_atomic
from .front import SPLITS, Front
from .hvstats import shared_reference
from .labels import run_labels
from .methods import run_fronts
from .rewards import run_judges
from .rewards.base import prompt_text
from .rundir import RunDir
from .stats import change_vs_base
from .store import PointRecord, weights_key

TEMPLATE = "explorer_page.html"


class Strings:
    """A table of distinct strings; a response given by many points is stored once."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.items)
            self.items.append(text)
        return self._index[text]


def find_record(records: Sequence[PointRecord], weights: dict[str, float], settings_key: str | None,
                rewards: dict[str, float]) -> PointRecord | None:
    """The stored point a front point was made from: same settings key when the front records it, else the same
    weights and exactly the same mean rewards (fronts written before settings keys were recorded)."""
    key = weights_key(weights)
    for rec in records:
        if weights_key(rec.label) != key:
            continue
        if settings_key is not None:
            if rec.settings_key == settings_key:
                return rec
        elif rec.rewards == rewards:
            return rec
    return None


def split_prompts(run: RunDir, front: Front) -> dict[str, list[str] | None]:
    """Each split's prompt texts of a front: recorded in it, else rebuilt from the run's config (None if neither works)."""
    if front.prompts is not None:
        return {s: front.prompts.of(s) for s in SPLITS}
    counts = {"val": front.settings.val_prompts, "test": front.settings.test_prompts} if front.settings else {}
    out: dict[str, list[str] | None] = {"val": None, "test": None}
    try:
        cfg = run.load_config()
        for split in out:
            n = counts.get(split) or getattr(cfg.sweep, f"{split}_prompts")
            out[split] = [prompt_text(p) for p in eval_prompts(cfg, split, n)]
    except Exception:  # noqa: BLE001 - the page still works, with prompts shown by number
        pass
    return out


def _responses(strings: Strings, rec: PointRecord | None) -> list[int] | None:
    return None if rec is None or not rec.responses else [strings.add(r) for r in rec.responses]


def run_data(run: RunDir, strings: Strings) -> dict:
    """One run's part of the payload (see the module docstring)."""
    names = run_fronts(run)
    if not names:
        raise ConfigError(f"{run.root}: no front-<method>.json; run `mvalign run` first (the explorer shows evaluated "
                          "fronts)")
    fronts = {m: run.read_front(m) for m in names}
    values = next(iter(fronts.values())).values
    store = run.store() if run.store_path.is_file() else None
    stored = {}

    def records(method: str, split: str) -> list[PointRecord]:
        if store is None:
            return []
        if (method, split) not in stored:
            stored[method, split] = store.points(method, split)
        return stored[method, split]

    def base_of(front: Front) -> dict:
        """The base model as a front saw it (its own prompts: methods may be evaluated with different settings)."""
        out = {}
        for split in ("test", "val"):
            b = front.base.of(split)
            rec = find_record(records("base", split), {v: 0.0 for v in values}, b.settings_key, b.rewards)
            out[split] = {"rewards": b.rewards, "ci95": b.ci95, "scores": b.scores, "responses": _responses(strings, rec)}
        return out

    def prompts_of(front: Front) -> dict:
        return {s: None if t is None else [strings.add(x) for x in t] for s, t in split_prompts(run, front).items()}

    ref = shared_reference(list(fronts.values()))
    methods = []
    for method, front in fronts.items():
        base = base_of(front)
        points = []
        for i, p in enumerate(front.points):
            rec = find_record(records(front.store_method, p.split), p.weights, p.settings_key, p.rewards)
            scores = p.scores or (rec.scores if rec is not None else {})
            vs_base = p.vs_base
            if not vs_base and scores and base[p.split]["scores"] and p.usable:
                vs_base = change_vs_base(scores, base[p.split]["scores"], n_boot=1000, seed=0)
            points.append({"id": f"{method}:{i}", "split": p.split, "weights": p.weights, "rewards": p.rewards,
                           "ci95": p.ci95, "pareto": p.pareto, "flag": p.flag, "scores": scores, "vs_base": vs_base,
                           "disputed": p.disputed, "settings_key": p.settings_key,
                           "responses": _responses(strings, rec)})
        for j, d in enumerate(front.racing.dropped if front.racing else []):  # evaluated on the first n val prompts
            points.append({"id": f"{method}:raced{j}", "split": "val", "weights": d.weights, "rewards": d.rewards,
                           "ci95": None, "pareto": False, "flag": "", "raced_out": d.prompts, "scores": d.scores,
                           "vs_base": d.vs_base, "responses": [strings.add(r) for r in d.responses]})
        methods.append({"name": method, "hv_test": front.hv_with(ref),
                        "settings": front.settings.to_json() if front.settings else {},
                        "points": points, "base": base, "prompts": prompts_of(front), "agreement": front.agreement})
    return {"name": run.root.resolve().name, "root": str(run.root.resolve()), "values": values,
            "judges": run_judges(run, values), "reference_point": ref, "methods": methods, "measures": measures(run),
            "labels": run_labels(run)}



def measures(run: RunDir) -> dict:
    """Each measure of the run's audit (RUN/audit.json): its value, role, kind, anchor scores as text, trust."""
    from .audit import anchor_text, read_audit
    from .labels import people_text

    audit = read_audit(run) or {}
    return {k: {"value": e["value"], "role": e["role"], "measure": e["measure"], "kind": e["kind"],
                "anchor": anchor_text(e), "trusted": e["trusted"], "people": people_text(e.get("people")),
                "people_shown": bool((e.get("people") or {}).get("shown"))}
            for k, e in (audit.get("measures") or {}).items()}


def explorer_data(runs: Sequence[RunDir]) -> dict:
    """The page's payload for one or more runs (every run must have evaluated fronts)."""
    strings = Strings()
    data = [run_data(r, strings) for r in runs]
    return {"strings": strings.items, "runs": data}


def render(data: dict) -> str:
    """The HTML page: template + plotly's offline bundle + the payload (both inlined)."""
    from plotly.offline import get_plotlyjs

    page = files("mvalign").joinpath(TEMPLATE).read_text(encoding="utf-8")
    # "<" as \u003c: no response text (e.g. "</script>" or "<!--") can end or confuse the script element
    payload = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return page.replace("/*PLOTLYJS*/", get_plotlyjs()).replace("/*PAYLOAD*/", payload)


def _finite(x):
    """JSON-safe: NaN / ±inf (a flagged point's rewards) become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def default_out(runs: Sequence[RunDir]) -> Path:
    return runs[0].root / "explorer.html" if len(runs) == 1 else Path("explorer.html")


def check_page_destination(out: Path) -> None:
    """Refuse to write the page over anything that is not an earlier explorer page (a run's store, a config, a
    model file), into a folder, or through a symbolic link."""
    if out.is_symlink():
        raise ConfigError(f"--out {out}: is a symbolic link; give a plain file path (writes never follow a link)")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give the page's file path, e.g. {out / 'explorer.html'}")
    if out.exists():
        with open(out, "rb") as f:
            head = f.read(2048)
        if b"<title>mvalign front explorer</title>" not in head:
            raise ConfigError(f"--out {out}: exists and is not an explorer page; it is kept. Choose another path")


def write_explorer(runs: Sequence[RunDir], out: Path | None = None) -> Path:
    """Write explorer.html (atomically): into the run for one run, ./explorer.html for several, or `out`."""
    if not runs:
        raise ConfigError("give at least one run directory")
    for run in runs:
        if not run.root.is_dir():
            raise ConfigError(f"{run.root}: no such run directory")
    out = Path(out) if out is not None else default_out(runs)
    check_page_destination(out)
    html = render(explorer_data(runs))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "the explorer page", lambda tmp: tmp.write_text(html, encoding="utf-8"),
                 "it is rebuilt from the run's fronts and store at any time")
    return out


def serve(path: Path, port: int = 8765, runs: Sequence[RunDir] = ()) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:`port` (0: any free port) serving the page at `path` and, for `runs` (in the
    page's order), the labels API (`mvalign.explorer_server`); call serve_forever() on it."""
    from .explorer_server import make_server

    return make_server(Path(path), port, list(runs))
