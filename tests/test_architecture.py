"""The package's shape: no import cycles (imports inside functions count), no import up a layer, nobody but
mvalign.front reads a front by string key, modules stay small, the bench is a package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mvalign"
BENCH = SRC.parents[1] / "bench"

LAYERS = [
    # 0: foundations, no mvalign imports but among themselves
    {"errors", "faults", "pareto", "stats", "judges", "judging", "store", "devices", "config", "config.sections",
     "config.objectives", "data.pairs", "testing", "agreement", "anchors", "shapes"},
    # 1: data, models, run directory, the front type
    {"data", "data.builtin", "data.generic", "data.hh_rlhf", "data.pku", "data.readers", "data.truthfulqa", "models",
     "lora", "rundir", "front", "frontparts", "hvstats", "rewards.base", "search", "bo", "train", "train.dpo"},
    # 2: what the methods and the sweep are built from
    {"candidates", "generate", "mixed", "fusion", "combine", "train.tokenize", "train.logprobs", "train.losses",
     "train.decorrelation", "train.trainer", "rewards", "rewards.bt_head", "rewards.hf", "rewards.rate",
     "rewards.detectors", "track"},
    # 3: training jobs, consistency, the sweep engine and racing, measures of the model itself
    {"train.job", "consistency", "sweep", "race", "scaleout", "likelihood", "probes", "serve_engine"},
    # 4: the methods (a module of the methods package is here without being listed: a new method adds nothing)
    {"methods", "diagnose"},
    # 5: evaluation and its outputs
    {"evaluate", "report", "explorer", "explorer_server", "compare", "card", "export", "audit", "labels", "serve",
     "serve_api"},
    # 6: entry points
    {"pick", "pipeline", "demo", "cli", "cli_group", "cli_judges", "cli_serve"},
]


def modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """mvalign modules `name` imports anywhere in its file (module level or inside functions), except under
    `if TYPE_CHECKING:`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").startswith("mvalign"):
                mod = node.module.removeprefix("mvalign").lstrip(".")
            else:
                continue
            for alias in node.names:
                target = f"{mod}.{alias.name}".lstrip(".")
                out.add(target if target in known else mod)
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("mvalign.") for a in node.names if a.name.startswith("mvalign.")}
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def layer_of(module: str) -> int | None:
    """Its layer, or its package's (methods.<name> is a method module)."""
    listed = {m: i for i, group in enumerate(LAYERS) for m in group}
    if module in listed:
        return listed[module]
    package = module.rpartition(".")[0]
    return listed.get(package) if package == "methods" else None


def test_every_module_has_a_layer():
    assert [m for m in modules() if m and layer_of(m) is None] == []
    assert set().union(*LAYERS) <= set(modules())


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_import_goes_up_a_layer():
    g = graph()
    up = sorted(f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})" for m, ds in g.items() if m
                for d in ds if layer_of(d) > layer_of(m))
    assert up == []


def test_only_the_front_module_reads_a_front_by_key():
    pattern = re.compile(r"""\b(front|fronts\[[^]]*\]|f|fr)(\[["']|\.get\(["'])|["'](rewards_val|scores_val|settings_key_val|"""
                         r"""store_method)["']""")
    hits = [f"{p.relative_to(SRC)}:{i}: {line.strip()}" for p in SRC.rglob("*.py") if p.name != "front.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_modules_stay_small():
    """About 300 lines at most (the largest: front.py with the file format documented in full, cli.py, rundir.py)."""
    big = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 340}
    assert big == {}


def test_bench_is_a_package_that_needs_no_path_edits():
    scripts = [p for p in BENCH.rglob("*.py")]
    assert all((p.parent / "__init__.py").is_file() for p in scripts)
    edits = [f"{p.relative_to(BENCH)}" for p in scripts
             if re.search(r"sys\.path\.(insert|append)|from tests|import common\b|from common import", p.read_text())]
    assert edits == []


def test_every_benchmark_imports():
    """Each bench module imports as part of the package (what `python -m bench.<...>` does before it runs)."""
    import importlib

    names = [".".join(p.relative_to(BENCH.parent).with_suffix("").parts) for p in BENCH.rglob("*.py")]
    for name in sorted(n.removesuffix(".__init__") for n in names):
        importlib.import_module(name)
    # and every name a benchmark imports from mvalign inside its functions exists
    missing = []
    for path in BENCH.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mvalign"):
                module = importlib.import_module(node.module)
                missing += [f"{path.relative_to(BENCH)}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name)]
    assert missing == []
