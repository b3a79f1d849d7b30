"""Who may import whom (docs/architecture.md, "Who imports whom"), read from the source with `ast`.

- Plugins use only qdcore's public surface: a file under plugins/ (or the third-party example
  in docs/examples/qd-spiral) never imports a qdcore submodule or a private name, so anyone
  can copy a built-in as a template.
- No import cycles among qdcore's modules (nor among the built-ins'), counting the imports
  inside functions too.
- qdcore never imports qdplugins; the trainer (qdcore/training/) never reaches the pipeline,
  the studio, the benchmarks or the CLI; the model (draw.py) never reaches the trainer; only the
  CLI imports the benchmarks (qdcore/bench/); validating a recipe never imports TensorFlow.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import qdcore

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py")) + sorted(
    (ROOT / "docs" / "examples" / "qd-spiral").rglob("*.py")
)

# The trainer and its machinery: the modules of qdcore/training/.
TRAINING = {
    "train",
    "step",
    "plan",
    "timing",
    "distribute",
    "optimizer",
    "checkpoints",
    "mixing",
    "summaries",
    "locks",
    "stopping",
    "warm_start",
}
# The DRAW model: what the trainer, the pipeline and the packs build on.
MODEL = ["qdcore.draw", "qdcore.conditioning", "qdcore.ink"]
# Loading and validating a recipe: what `qd validate` and `qd plugins` run.
VALIDATION = ["recipe", "params", "schema", "config", "registry", "plugin_manager", "limits", "overrides"]


# --- plugins use the public surface ---------------------------------------------------------------


def private_imports(source: str, public: set[str]) -> list[str]:
    """Each import (or `qdcore.<name>` use) in `source` that reaches past qdcore's public surface."""
    found = []
    tree = ast.parse(source)
    qdcore_aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("qdcore."):
                    found.append(f"line {node.lineno}: import {a.name} (a qdcore submodule)")
                elif a.name == "qdcore":
                    qdcore_aliases.add(a.asname or "qdcore")
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            module = "." * node.level + (node.module or "")
            if module.startswith("qdcore."):
                found.append(f"line {node.lineno}: from {module} import ... (a qdcore submodule)")
                continue
            for a in node.names:
                if a.name.startswith("_"):
                    found.append(f"line {node.lineno}: from {module} import {a.name} (a private name)")
                elif module == "qdcore" and a.name not in public:
                    found.append(f"line {node.lineno}: from qdcore import {a.name} (not in qdcore.__all__)")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in qdcore_aliases
            and node.attr not in public
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr} (not in qdcore.__all__)")
    return found


def test_the_checker_finds_what_it_forbids():
    source = (
        "import qdcore\nimport qdcore.paths\nfrom qdcore.atomic import atomic_path\nfrom qdcore import _x, hookimpl\n"
        "from .datasets import _check_categories, categories\nfrom qdcore import paths\nqdcore.atomic.current_umask()\n"
        "def f():\n    from qdcore.images import open_image\n"
    )
    found = private_imports(source, set(qdcore.__all__))
    assert [line.split(":")[0] for line in found] == [
        "line 2",
        "line 3",
        "line 4",
        "line 5",
        "line 6",
        "line 9",
        "line 7",
    ]
    assert (
        private_imports(
            "from qdcore import hookimpl, atomic_path\nfrom .datasets import load_image\n", set(qdcore.__all__)
        )
        == []
    )


def test_plugins_import_only_qdcores_public_surface():
    assert len(PLUGIN_FILES) >= 8  # the built-ins and the example were found
    public = set(qdcore.__all__)
    assert all(hasattr(qdcore, name) for name in public)
    problems = {str(p.relative_to(ROOT)): private_imports(p.read_text(encoding="utf-8"), public) for p in PLUGIN_FILES}
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_docs_plugin_examples_import_only_the_public_surface():
    # People copy these too (hooks.md's example for each hook, the tutorial's snippets).
    problems = {}
    for doc in ("hooks.md", "writing-plugins.md"):
        blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(encoding="utf-8"), re.S)
        assert blocks, doc
        for i, block in enumerate(blocks):
            if found := private_imports(block, set(qdcore.__all__)):
                problems[f"{doc} block {i}"] = found
    assert problems == {}


# --- qdcore's import graph -------------------------------------------------------------------------


def package_modules(folder: str, package: str) -> dict[str, Path]:
    """Module name -> file for the package installed from `folder` (plugins/ is `qdplugins`)."""
    mods = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = (package,) + path.relative_to(ROOT / folder).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def imported(module: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every module `module` imports, anywhere in the file (a lazy import is still a dependency).
    `from . import x` names submodule x; `from . import Name` names the package itself."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
    return out - {module}


def import_graph(folder: str = "qdcore", package: str = "qdcore") -> dict[str, set[str]]:
    mods = package_modules(folder, package)
    return {m: imported(m, p, mods) for m, p in mods.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the graph's own nodes, as a path that ends where it starts."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node] & graph.keys()):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), set()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def unresolved(folder: str = "qdcore", package: str = "qdcore") -> list[str]:
    """Each `from <package> import name` (lazy ones too) whose name is neither a submodule nor
    defined at the top of that package's __init__.py: what a move leaves behind."""
    mods = package_modules(folder, package)
    defined = {}
    for m, path in mods.items():
        if path.name == "__init__.py":
            names = set()
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names |= {(a.asname or a.name).split(".")[0] for a in node.names}
                elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            defined[m] = names
    found = []
    for m, path in mods.items():
        pkg = m.split(".") if path.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == package):
                base = (
                    ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level
                    else node.module
                )
                if base not in mods:
                    found.append(f"{m} line {node.lineno}: no module {base}")
                    continue
                for a in node.names:
                    if base in defined and f"{base}.{a.name}" not in mods and a.name not in defined[base]:
                        found.append(f"{m} line {node.lineno}: {base} has no {a.name}")
    return found


def test_every_import_of_a_qdcore_module_names_one_that_exists():
    assert unresolved() == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c", "os"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_qdcore_has_no_import_cycles():
    graph = import_graph()
    assert {"qdcore.training.train", "qdcore.training.distribute", "qdcore.engine"} <= graph.keys()
    assert cycle(graph) is None


def test_the_builtin_plugins_have_no_import_cycles():
    graph = import_graph("plugins", "qdplugins")
    assert {"qdplugins.datasets", "qdplugins.seeds", "qdplugins.recognizers"} <= graph.keys()
    assert "qdplugins.datasets" in graph["qdplugins.seeds"]  # relative imports are followed
    assert cycle(graph) is None


def test_qdcore_never_imports_qdplugins():
    offenders = {m: sorted(t for t in deps if t.split(".")[0] == "qdplugins") for m, deps in import_graph().items()}
    assert {m: v for m, v in offenders.items() if v} == {}


def outer(module: str) -> bool:
    """A module of the outer layers: the studio, the benchmarks or the command line."""
    return module.split(".")[1:2] in (["studio"], ["bench"], ["cli"])


def test_the_trainer_lives_in_its_own_subpackage_and_never_reaches_the_outer_layers():
    graph = import_graph()
    training = sorted(m for m in graph if m.startswith("qdcore.training."))
    assert {m.split(".")[-1] for m in training} == TRAINING  # every one named above, and only they
    assert not any(
        m.split(".")[-1] in TRAINING for m in graph if not m.startswith("qdcore.training")
    )  # none left behind
    bad = {
        m: hits
        for m in training
        if (hits := sorted(t for t in reachable(graph, m) if outer(t) or t == "qdcore.engine"))
    }
    assert bad == {}


def test_the_model_never_reaches_the_trainer_the_pipeline_or_the_outer_layers():
    graph = import_graph()
    assert set(MODEL) <= graph.keys()
    bad = {
        m: hits
        for m in MODEL
        if (
            hits := sorted(
                t for t in reachable(graph, m) if outer(t) or t.startswith("qdcore.training") or t == "qdcore.engine"
            )
        )
    }
    assert bad == {}


def test_only_the_command_line_imports_the_benchmarks():
    # The benchmarks are an outer layer: the step plan's timing child is training/timing.py,
    # so `precision: auto` runs no benchmark code.
    graph = import_graph()
    assert {"qdcore.bench.bench", "qdcore.bench.bench_data", "qdcore.bench.bench_frontier"} <= graph.keys()
    bad = {
        m: hits
        for m, deps in graph.items()
        if not m.startswith("qdcore.bench") and m != "qdcore.cli"
        if (hits := sorted(t for t in deps if t.startswith("qdcore.bench")))
    }
    assert bad == {}


def test_the_step_plans_timing_child_is_the_trainers_own():
    from qdcore.training import plan

    assert plan.TIMING_CHILD == ("qdcore.training.timing",)


def test_validating_every_shipped_recipe_never_imports_tensorflow():
    # test_cli checks the same through `qd validate`; this checks the modules themselves,
    # whoever calls them, and every recipe the repository ships.
    recipes = sorted(str(p) for p in (ROOT / "recipes").glob("*.yaml"))
    assert recipes
    code = (
        "import importlib, sys\n"
        f"for name in {VALIDATION!r}:\n"
        "    importlib.import_module('qdcore.' + name)\n"
        "from qdcore import plugin_manager, recipe\n"
        "registry = plugin_manager.build().registry\n"
        f"for path in {recipes!r}:\n"
        "    recipe.load(path, registry)\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
        "print('validated')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "QD_LOAD_PLUGINS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("validated")


def test_where_a_model_comes_from_has_one_owner():
    # qdcore/sources.py resolves `model.from`, packs, shared models, the recipe's own folder
    # and `model.start` (once per Run: tests/test_engine.py). The studio reads `run.source` and
    # the lists sources makes; it never opens a pack, a model record or the cache key itself.
    graph = import_graph()
    studio = {m: deps for m, deps in graph.items() if m.startswith("qdcore.studio")}
    assert {"qdcore.studio.session", "qdcore.studio.server"} <= studio.keys()
    owned = {"qdcore.packs", "qdcore.models"} | {m for m in graph if m.startswith("qdcore.training")}
    assert {m: sorted(deps & owned) for m, deps in studio.items() if deps & owned} == {}
    # The cache key of a recipe's own weights is made in one place.
    callers = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "qdcore").rglob("*.py")) + sorted((ROOT / "plugins").rglob("*.py"))
        if re.search(r"\.model_key\(", p.read_text(encoding="utf-8"))
    ]
    assert callers == ["qdcore/sources.py"]


def test_the_reporter_is_the_bottom_layer_and_the_only_stderr_switch():
    # One Reporter decides where words go (docs/architecture.md): it imports nothing of qd's,
    # so the trainer and the benchmarks take it; none keeps its own "print unless quiet".
    graph = import_graph()
    assert {d for d in graph["qdcore.reporter"] if d.startswith("qdcore")} == set()
    assert "qdcore.reporter" in graph["qdcore.training.train"] and "qdcore.reporter" in graph["qdcore.bench.bench"]
    copies = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "qdcore").rglob("*.py"))
        if re.search(r"lambda \w+: print\(", p.read_text(encoding="utf-8"))
    ]
    assert copies == []


def test_the_recipe_core_sits_below_the_model_and_the_trainer():
    # Reading a recipe opens nothing under the cache (tests/test_recipe.py) and imports no
    # model, pack or trainer, even lazily: a pack name is only a name there (paths.PACK_NAME).
    graph = import_graph()
    above = {"qdcore.draw", "qdcore.packs", "qdcore.sources", "qdcore.engine"}
    bad = {
        m: hits
        for m in [f"qdcore.{name}" for name in VALIDATION] + ["qdcore.reporter", "qdcore.paths"]
        if (hits := sorted(t for t in reachable(graph, m) if t in above or t.startswith("qdcore.training")))
    }
    assert bad == {}


def test_the_signal_state_is_the_bottom_layer_the_cli_installs_and_the_trainer_checks():
    graph = import_graph()
    assert {d for d in graph["qdcore.interrupt"] if d.startswith("qdcore")} == set()
    assert "qdcore.interrupt" in graph["qdcore.cli"] and "qdcore.interrupt" in graph["qdcore.training.train"]
