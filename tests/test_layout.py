"""The shape of the code (docs/architecture.md, "Style"): a function in qdcore/, the built-in
plugins or a docs/ figure script says one thing.

A function of 60 lines or more mixes concerns (the trainer's loop once held its resume, its
stop rule and its final writes): split it along its concepts, as train.py's phases and
params.py's one checker per annotation are.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of each function, nested ones and methods too, of `limit`
    lines or more, counted from its `def` (decorators aside) to its last line."""
    return [
        (node.name, node.lineno, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= limit
    ]


def test_the_counter_counts_a_function_from_def_to_its_last_line():
    body = "".join(f"    x{i} = {i}\n" for i in range(58))
    assert long_functions(f"def f():\n{body}    return 1\n") == [("f", 1, 60)]
    assert long_functions(f"@decorated\ndef g():\n{body}") == []  # 59 lines
    method = textwrap.indent(f"def m(self):\n{body}    return 1\n", "    ")
    assert long_functions(f"class C:\n{method}") == [("m", 2, 60)]


def test_every_function_in_qdcore_the_plugins_and_the_docs_scripts_is_under_60_lines():
    files = sorted(
        [*(ROOT / "qdcore").rglob("*.py"), *(ROOT / "plugins").rglob("*.py"), *(ROOT / "docs").rglob("*.py")]
    )
    assert (
        len(files) > 40
        and any(p.parent.name == "plugins" for p in files)
        and any(p.parent.name == "docs" for p in files)
    )
    found = {
        f"{path.relative_to(ROOT)}:{line} {name}": n
        for path in files
        for name, line, n in long_functions(path.read_text(encoding="utf-8"))
    }
    assert found == {}


def test_architecture_md_names_every_module_where_it_lives():
    # The file table is how a newcomer finds a concept: a module it does not name, or names
    # where it no longer lives, sends them to the wrong place.
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = doc[doc.index("## Files") :].split("\n## ")[0]
    missing = []
    for path in sorted((ROOT / "qdcore").rglob("*.py")):
        rel = path.relative_to(ROOT / "qdcore").as_posix()
        if path.name in ("__init__.py", "__main__.py") and rel != "__init__.py":
            continue
        folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else None
        names = [f"`qdcore/{rel}`", f"`{rel}`"] + ([f"`qdcore/{folder}`"] if folder == "studio/" else [])
        if "/" not in rel:
            names.append(f"`{rel}`")  # a row naming several top-level modules
        if not any(n in table for n in names):
            missing.append(rel)
    assert missing == []
