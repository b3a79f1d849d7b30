"""The model card `qd models export` writes beside a pack (docs/packs.md, "The model card").

A card is Markdown with YAML front matter, the layout model hubs read as a README.md: the
license, the data, the training budget and the figures, all taken from the pack's manifest,
so the card says nothing the pack does not. It is documentation only: import never reads it.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from typing import Optional

import yaml

# Google's Quick, Draw! data is CC BY 4.0; weights learned from it are licensed the same way
# here, so the attribution the data asks for travels with them (docs/packs.md says why).
QUICKDRAW_DATASETS = ("quickdraw", "quickdraw-strokes")
QUICKDRAW_URL = "https://github.com/googlecreativelab/quickdraw-dataset"
CC_BY_URL = "https://creativecommons.org/licenses/by/4.0/"
ATTRIBUTION = (
    f"Trained on the Quick, Draw! dataset by Google ({QUICKDRAW_URL}), licensed under CC BY 4.0 ({CC_BY_URL})."
)


def _dataset(manifest: dict) -> dict:
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    dataset = data.get("dataset")
    return dataset if isinstance(dataset, dict) else {}


def is_quickdraw(manifest: dict) -> bool:
    return _dataset(manifest).get("use") in QUICKDRAW_DATASETS


def _number(value):
    """A finite figure rounded for reading, or None (a recognizer record may hold anything:
    NaN, or an int too large for a float)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else None


# Figures nest a level or two (`per_category.cat.samples.recognized`); a record nested deeper
# is not figures, and walking it could reach Python's recursion limit.
DEPTH = 4


def _leaves(record, prefix: str = "", depth: int = 0) -> dict:
    """The numbers in a nested record, by dotted path (`samples.recognized`)."""
    out = {}
    if isinstance(record, dict) and depth < DEPTH:
        # In key order: a manifest read back (its JSON sorted) and the one just written give one card.
        for key, value in sorted(((k, v) for k, v in record.items() if isinstance(k, str)), key=lambda kv: kv[0]):
            if key != "per_category":
                if isinstance(value, dict):
                    out.update(_leaves(value, f"{prefix}{key}.", depth + 1))
                elif _number(value) is not None:
                    out[prefix + key] = _number(value)
    return out


def metrics(manifest: dict) -> list[dict]:
    """The held-out figures and the recognizer's, as model-index metrics: each top-level
    number, and for per-category records the median over the categories of each number."""
    out = []
    held = manifest.get("held_out") if isinstance(manifest.get("held_out"), dict) else {}
    names = {
        "bound": "held-out bound, nats per image (lower is better)",
        "lx": "held-out reconstruction term, nats per image",
        "lz": "held-out latent term, nats per image",
        "n_images": "held-out drawings scored",
    }
    for key, label in names.items():
        if _number(held.get(key)) is not None:
            out.append({"type": f"held_out.{key}", "name": label, "value": _number(held[key])})
    rec = manifest.get("recognizer") if isinstance(manifest.get("recognizer"), dict) else {}
    for path, value in _leaves(rec).items():
        out.append({"type": f"recognizer.{path}", "name": f"recognizer: {path}", "value": value})
    per = rec.get("per_category")
    if isinstance(per, dict) and per:
        paths: dict[str, list] = {}
        for record in per.values():
            for path, value in _leaves(record).items():
                paths.setdefault(path, []).append(value)
        for path, values in sorted(paths.items()):
            out.append(
                {
                    "type": f"recognizer.per_category.{path}",
                    "name": f"recognizer: {path}, median over {len(values)} categories",
                    "value": _number(statistics.median(values)),
                }
            )
    return out


def relay_totals(manifest: dict) -> Optional[tuple[int, int, int]]:
    """(steps, images, legs) over a relay's legs: the manifest's `steps` are the last leg's,
    what made the weights is every leg's. None for one leg, or legs that do not say."""
    legs = manifest.get("legs")
    if not (isinstance(legs, list) and len(legs) > 1 and all(isinstance(g, dict) for g in legs)):
        return None
    steps, images = [g.get("steps") for g in legs], [g.get("images") for g in legs]
    if not all(_whole(v) for v in steps + images):
        return None
    return sum(steps), sum(images), len(legs)


def front_matter(manifest: dict) -> dict:
    name = manifest["name"]
    train = manifest.get("train") or {}
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    steps, batch = manifest.get("steps"), train.get("batch_size")
    quickdraw = is_quickdraw(manifest)
    budget = {"steps": steps, "batch_size": batch}
    if isinstance(steps, int) and isinstance(batch, int):
        budget["images"] = steps * batch  # drawings shown, repeats counted
    if _number(data.get("train_images")) is not None:
        budget["train_drawings"] = data["train_images"]  # distinct drawings, after the held-out split
    totals = relay_totals(manifest)
    if totals is not None:
        budget.update(zip(("steps", "images", "legs"), totals))
    front = {
        "license": "cc-by-4.0" if quickdraw else "unknown",
        "library_name": "qd",
        "tags": ["qd", "draw", "quickdraw", "doodles", "image-generation"],
        "datasets": ["quickdraw"] if quickdraw else [],
    }
    if quickdraw:
        front["attribution"] = ATTRIBUTION
    front["qd"] = {
        "pack": name,
        "format_version": manifest.get("format_version"),
        "categories": len(manifest.get("categories") or []),
        "conditional": manifest.get("conditional"),
        "training": budget,
    }
    found = metrics(manifest)
    if found:
        dataset = _dataset(manifest).get("use") or "unknown"
        front["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-generation", "name": "doodle generation"},
                        "dataset": {"type": dataset, "name": f"{dataset} (held-out drawings)"},
                        "metrics": found,
                    }
                ],
            }
        ]
    return front


def _cell(text) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _flow(text: str) -> str:
    """`text` as a YAML flow scalar: bare when plain, else JSON's quoting (valid YAML too)."""
    return text if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]*", text) else json.dumps(text, ensure_ascii=False)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _legs_section(legs) -> list[str]:
    """The relay's legs, oldest first: each started from the weights the one before left."""
    if not isinstance(legs, list) or not legs:
        return []
    hours = lambda v: "-" if _number(v) is None else f"{v / 3600:.2f}"  # noqa: E731
    lines = [
        "",
        "## Training legs",
        "",
        "| leg | steps | images | wall hours | CPU hours | machines |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for leg in legs:
        leg = leg if isinstance(leg, dict) else {}
        sessions = [x for x in leg.get("sessions") or [] if isinstance(x, dict)]
        machines = sorted({f"{x.get('cpu')} ({x.get('cores')} cores, {x.get('plan')})" for x in sessions})
        where = "; ".join(machines) or leg.get("about") or "-"
        lines.append(
            f"| {_cell(leg.get('name'))} | {_count(leg.get('steps'))} | {_count(leg.get('images'))} | "
            f"{hours(leg.get('wall_s'))} | {hours(leg.get('cpu_s'))} | {_cell(where)} |"
        )
    return lines


def card_text(manifest: dict, file_name: str) -> str:
    """The card of a pack whose (checked) manifest is `manifest`, written beside `file_name`."""
    front = yaml.safe_dump(front_matter(manifest), sort_keys=False, allow_unicode=True, width=100)
    cats = list(manifest.get("categories") or [])
    example = "cat" if "cat" in cats or not cats else cats[0]  # the category of the usage example
    use = _dataset(manifest).get("use") if isinstance(_dataset(manifest).get("use"), str) else None
    lines = _about(manifest, use) + _usage(manifest["name"], use, example, file_name) + _categories(manifest)
    lines += _legs_section(manifest.get("legs"))
    lines += _license(manifest)
    return f"---\n{front}---\n\n" + "\n".join(lines)


def _about(manifest: dict, use: Optional[str]) -> list[str]:
    """What the model is, what made it and its held-out bound."""
    model = manifest.get("model") or {}
    cats = list(manifest.get("categories") or [])
    held = manifest.get("held_out") if isinstance(manifest.get("held_out"), dict) else {}
    budget = front_matter(manifest)["qd"]["training"]
    kind = (
        f"class-conditional on {len(cats)} categories" if manifest.get("conditional") else f"one category ({cats[0]})"
    )
    if model.get("attention"):
        r, w = model.get("read_n"), model.get("write_n")
        reads = f"attention: read {r}x{r}, write {w}x{w}"
    else:
        reads = "no attention"
    source = "Quick, Draw! doodles" if is_quickdraw(manifest) else f"the `{use or 'unknown'}` dataset"
    lines = [
        f"# {manifest['name']}",
        "",
        f"A DRAW model (Gregor et al., 2015) trained with qd on {source}: {kind}, "
        f"{model.get('height')}x{model.get('width')} greyscale, T={model.get('T')} steps, {reads}, "
        f"LSTMs {model.get('enc_size')}/{model.get('dec_size')}, z {model.get('z_size')}.",
        "",
    ]
    if manifest.get("description"):
        lines += [str(manifest["description"]), ""]
    trained = f"Trained {_count(budget.get('steps'))} steps of {_count(budget.get('batch_size'))}"
    if "legs" in budget:
        trained = f"Trained in {budget['legs']} legs (below): {_count(budget.get('steps'))} steps"
        trained += f" of {_count(budget.get('batch_size'))} in all"
    if "images" in budget:
        trained += f" ({_count(budget['images'])} images)"
    if "train_drawings" in budget:
        trained += f" on {_count(budget['train_drawings'])} drawings"
    if _number(held.get("bound")) is not None:
        trained += f"; held-out bound {held['bound']:.1f} nats per image"
    return lines + [trained + ".", ""]


def _usage(name: str, use: Optional[str], example: str, file_name: str) -> list[str]:
    return [
        "## Use it with qd",
        "",
        "```",
        f"qd models import {file_name}",
        "```",
        "",
        "then name it in a recipe (`qd run cat.yaml` draws from it, nothing trained):",
        "",
        "```yaml",
        f"dataset: {{use: {_flow(use or 'quickdraw')}, category: {_flow(example)}}}",
        f"model: {{from: {name}}}",
        "```",
        "",
        f"`model: {{start: {name}}}` fine-tunes it on a recipe's own drawings instead (docs/finetune.md).",
        "",
    ]


def _categories(manifest: dict) -> list[str]:
    """A table of the categories: drawings trained on, held-out bound."""
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    held = manifest.get("held_out") if isinstance(manifest.get("held_out"), dict) else {}
    lines = ["## Categories", "", "| category | drawings trained on | held-out bound (nats) |", "|---|---:|---:|"]
    per_count = data.get("per_category") if isinstance(data.get("per_category"), dict) else {}
    per_bound = held.get("per_category") if isinstance(held.get("per_category"), dict) else {}
    for cat in list(manifest.get("categories") or []):
        bound = _number(per_bound.get(cat))
        lines.append(f"| {_cell(cat)} | {_count(per_count.get(cat))} | {'-' if bound is None else f'{bound:.1f}'} |")
    return lines


def _license(manifest: dict) -> list[str]:
    lines = ["", "## License", ""]
    if is_quickdraw(manifest):
        lines.append(
            f"The weights are licensed CC BY 4.0 ({CC_BY_URL}). {ATTRIBUTION} "
            'Credit "Quick, Draw! data by Google, CC BY 4.0" wherever these weights or their drawings are shared.'
        )
    else:
        lines.append(
            "Trained on data qd does not know the license of: set `license:` above to what that data allows "
            "before sharing the weights."
        )
    return lines + [
        "",
        "Written by `qd models export` from the pack's manifest: the file's safetensors metadata "
        "`qd_manifest` (format 2), or `manifest.json` in a .qdpack (format 1).",
        "",
    ]
