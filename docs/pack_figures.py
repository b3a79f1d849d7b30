"""docs/packs.md's per-category figures of a class-conditional model (a pack or a shared model):
for each of its categories, what the recognizer makes of n prior samples through a recipe's
display chain, without and with `best_of`, beside the same chain applied to n real drawings.

    QD_DATA_DIR=../shared/data/quickdraw .venv/bin/python docs/pack_figures.py \
        recipes/cat.yaml --from zoo-26 [--n 500] [--best-of 4] [--category cat ...] [--out FILE]

Every category is drawn through the pipeline `qd eval` uses (engine.Run), in one process so the
model, the recognizer and the datasets load once. Prints one JSON line per category, then a
Markdown table; the figures do not depend on load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from qdcore import InputError, engine
from qdcore.plugin_manager import build
from qdcore.recipe import load


def category_figures(
    recipe_path: Path, registry, source: str, category: str, n: int, best_of: int, reconstruct: bool = False
) -> dict:
    """The figures at n, or at the largest n halved from it that the category's real drawings
    allow (two disjoint sets of n that the recognizer never trained on: 500 butterflies give
    n = 250 at most); the row says which n."""
    try:
        return _figures(recipe_path, registry, source, category, n, best_of, reconstruct)
    except InputError:
        if n // 2 < 50:
            raise
        return category_figures(recipe_path, registry, source, category, n // 2, best_of, reconstruct)


def _figures(recipe_path: Path, registry, source: str, category: str, n: int, best_of: int, reconstruct: bool):
    """One category's row: prior samples plain and with best_of (--best-of 1: plain only),
    the chain on real drawings, and with `reconstruct` the held-out reconstructions'."""
    sets = [f"dataset.category={category}", f"model.from={source}", "model.if_missing=error"]
    row = {"category": category, "n": n}
    for label, k in (("plain", 1), (f"best_of_{best_of}", best_of))[: 1 if best_of == 1 else 2]:
        recipe = load(recipe_path, registry, sets).with_overrides(n=n, best_of=k)
        pipeline = engine.Run(recipe)
        row[label] = pipeline.recognition(category)
        if label == "plain":
            row["real"] = pipeline.real_recognition(category)
            row["step"] = pipeline.model(train=False).step
            if reconstruct:
                row["reconstructions"] = pipeline.reconstruction_recognition(category, n)
    return row


def table(rows: list[dict], best_of: int) -> str:
    """Markdown: a row per category, then the medians; a column pair per figure set the rows hold."""
    sets = [("plain", "samples")]
    sets += [(f"best_of_{best_of}", f"best_of {best_of}")] if any(f"best_of_{best_of}" in r for r in rows) else []
    sets += [("reconstructions", "held-out reconstructions")] if any("reconstructions" in r for r in rows) else []
    head = "| category | real: recognized | chain on real: recognized, Frechet/floor | "
    head += " | ".join(f"{title}: recognized | Frechet/floor" for _, title in sets) + " |"
    lines = [head, "|---|---:|---:|" + "---:|---:|" * len(sets)]
    ratio = lambda f: f["frechet"] / f["frechet_floor"]  # noqa: E731
    for r in rows:
        real = r["real"]
        name = r["category"] if r.get("n", 500) == 500 else f"{r['category']} (n = {r['n']})"
        cells = " | ".join(f"{r[key]['recognized']:.3f} | {ratio(r[key]):.1f}x" for key, _ in sets)
        lines.append(
            f"| {name} | {real['raw']['recognized']:.3f} | {real['filtered']['recognized']:.3f}, "
            f"{real['filtered']['frechet_over_floor']:.2f}x | {cells} |"
        )
    median = statistics.median
    cells = " | ".join(
        f"{median([r[k]['recognized'] for r in rows]):.3f} | {median([ratio(r[k]) for r in rows]):.1f}x"
        for k, _ in sets
    )
    real_cells = f"{median([r['real']['raw']['recognized'] for r in rows]):.3f} | |"
    lines.append(f"| **median** | {real_cells} {cells} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", type=Path, help="a recipe of one category whose display chain judges the samples")
    ap.add_argument("--from", dest="source", required=True, help="the model: a pack or shared model name")
    ap.add_argument("--category", action="append", help="only these categories (default: all of the model's)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--best-of", type=int, default=4, help="1: the samples without best_of only")
    ap.add_argument("--reconstruct", action="store_true", help="also judge reconstructions of held-out drawings")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    registry = build().registry
    categories = args.category
    if not categories:
        probe = engine.Run(load(args.recipe, registry, [f"model.from={args.source}", "model.if_missing=error"]))
        categories = list(probe.model(train=False).model.classes or [])
    rows = []
    for c in categories:
        rows.append(category_figures(args.recipe, registry, args.source, c, args.n, args.best_of, args.reconstruct))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(table(rows, args.best_of), file=sys.stdout)


if __name__ == "__main__":
    main()
