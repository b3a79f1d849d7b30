"""`qd bench frontier`: which DRAW configuration draws best for the same compute.

The blog's configuration (T=10 glimpses, z=10, 256/256 LSTMs, 5x5 read/write) was never
questioned. Here each candidate changes a recipe's `model:` / `train:` keys (as `-s`
overrides) and gets the same budget of this machine's time:

1. time: each candidate's training step is timed in a fresh process (plan.run_child) under
   ONE step plan, the one `auto` measured for the recipe's own configuration, so the plan
   does not pick the winner. Rounds alternate the candidates, and each keeps its best median
   step, so a burst of other work hurts one round, not one candidate. The figures are cached
   per machine and plan (`--retime` measures again); time them on a quiet machine.
2. train: a candidate gets the steps its budget buys at its measured speed,
   `minutes * 60 * images_per_s / batch_size`, and trains with `qd train --iterations STEPS
   -s train.stop=budget` under that plan (its learning-rate schedule runs over exactly those
   steps, and the plateau rule ends none early). Equal steps,
   not equal wall clock: trainings may run side by side (`--jobs`) or under load without
   changing what each one learns.
3. score: `qd eval --n N`: the held-out bound, the recognized fraction, the Frechet distance
   to real drawings and its real-vs-real floor, through the recipe's display chain.

Each candidate's model lands in the cache under its own key, so any row can be drawn or
re-scored later with the same `qd eval RECIPE --iterations STEPS -s ...` the table prints.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..training import plan as step_plans
from ..atomic import atomic_path
from ..config import ModelConfig, TrainConfig
from ..errors import InputError, TrainingError
from ..paths import cache_dir


@dataclass(frozen=True)
class Candidate:
    name: str
    model: dict = field(default_factory=dict)  # ModelConfig overrides
    train: dict = field(default_factory=dict)  # TrainConfig overrides (batch_size, learning_rate)

    def sets(self) -> list[str]:
        """The candidate as `-s KEY=VALUE` overrides of the recipe."""
        return [f"model.{k}={v}" for k, v in self.model.items()] + [f"train.{k}={v}" for k, v in self.train.items()]


# One change (or one pair of changes) at a time from the blog's configuration, spanning what
# the issue asks: glimpses, latent size, LSTM sizes, read/write windows, learning rate/batch.
CANDIDATES = [
    Candidate("blog"),
    Candidate("T20", {"T": 20}),
    Candidate("z32", {"z_size": 32}),
    Candidate("T20-z32", {"T": 20, "z_size": 32}),
    Candidate("T20-z32-lstm128", {"T": 20, "z_size": 32, "enc_size": 128, "dec_size": 128}),
    Candidate("lstm512", {"enc_size": 512, "dec_size": 512}),
    Candidate("T20-read2", {"T": 20, "read_n": 2}),
    # More detail per glimpse for the decoder (issue 29: given a drawing's own latent, the
    # pack's decoder still drew blobs): a 10x10 write patch, and 8x8 over 16 glimpses.
    Candidate("write10", {"write_n": 10}),
    Candidate("T16-write8", {"T": 16, "write_n": 8}),
    Candidate("batch200-lr1e-3", {}, {"batch_size": 200, "learning_rate": 1e-3}),
]
TIMED_STEPS = 12
ROUNDS = 2


def by_name(names: list[str] | None) -> list[Candidate]:
    known = {c.name: c for c in CANDIDATES}
    if not names:
        return list(CANDIDATES)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"no frontier candidate named {', '.join(unknown)}; the candidates: {', '.join(known)}")
    return [known[n] for n in names]


def configs(c: Candidate, model: ModelConfig, train: TrainConfig) -> tuple[ModelConfig, TrainConfig]:
    from dataclasses import replace

    return replace(model, **c.model), replace(train, **c.train)


def mflop_per_image(model: ModelConfig) -> float:
    """Matmul MFLOP of one image's training step (forward + backward), bench's cost model."""
    from ..training.timing import gflop_per_step

    return gflop_per_step(model, 1) * 1e3


# -- 1. time ------------------------------------------------------------------------------------


def base_plan(model: ModelConfig, train: TrainConfig, say: Callable[[str], None]) -> str:
    """The step plan `auto` uses for the recipe's own configuration (measured once, cached)."""
    forced = os.environ.get(step_plans.FORCE_ENV, "").strip()
    if forced:
        return forced
    from dataclasses import replace

    long = -(-step_plans.MEASURE_MIN_IMAGES // train.batch_size)  # the fewest steps that are measured
    choice = step_plans.choose(model, replace(train, iterations=max(train.iterations, long)), say=say)
    return choice.plan.name


def _plan_for(name: str, batch_size: int) -> step_plans.StepPlan:
    plans = step_plans.candidates(batch_size, step_plans.cpu_count(), True, step_plans.gpu_names())
    for p in plans:
        if p.name == name:
            return p
    raise TrainingError(
        f"step plan {name!r} has no form at batch {batch_size}: choose another with {step_plans.FORCE_ENV}"
    )


def timings_path(plan_name: str, cands: list[Candidate], model: ModelConfig, train: TrainConfig) -> Path:
    info = step_plans.cpu_info()
    key = {
        "cpu": info["model"],
        "flags": info["flags"],
        "cores": step_plans.cpu_count(),
        "plan": plan_name,
        "base_model": model.as_dict(),
        "base_batch": train.batch_size,
        "steps": TIMED_STEPS,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "frontier" / f"timings-{digest}.json"


def time_candidates(
    cands: list[Candidate],
    model: ModelConfig,
    train: TrainConfig,
    plan_name: str,
    say: Callable[[str], None],
    retime: bool = False,
) -> dict[str, dict]:
    """{name: {"images_per_s", "busy"}}: the best median step over ROUNDS alternating rounds."""
    path = timings_path(plan_name, cands, model, train)
    known = {}
    if path.exists() and not retime:
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
    todo = [c for c in cands if c.name not in known]
    if todo:
        busy = step_plans.machine_busy()
        if busy:
            say(
                "other work keeps the cores busy: the step timings may rank candidates wrongly; "
                "time them on a quiet machine (--retime)"
            )
        best: dict[str, float] = {}
        for r in range(ROUNDS):
            for c in todo if r % 2 == 0 else todo[::-1]:
                m, t = configs(c, model, train)
                row = step_plans.run_child(
                    {
                        "kind": "qd",
                        "plan": _plan_for(plan_name, t.batch_size).as_dict(),
                        "model": m.as_dict(),
                        "batch_size": t.batch_size,
                        "iterations": TIMED_STEPS,
                    }
                )
                best[c.name] = max(best.get(c.name, 0.0), float(row["images_per_s_median"]))
                say(f"timed {c.name}: {row['images_per_s_median']:.0f} img/s (round {r + 1} of {ROUNDS})")
        for c in todo:
            known[c.name] = {"images_per_s": best[c.name], "busy": busy, "when": time.strftime("%Y-%m-%d %H:%M")}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(known, indent=1))
    return {c.name: known[c.name] for c in cands}


def budget_steps(minutes: float, images_per_s: float, batch_size: int) -> int:
    return max(1, round(minutes * 60 * images_per_s / batch_size))


# -- 2. train, 3. score -------------------------------------------------------------------------


def _qd(*args: str) -> list[str]:
    return [sys.executable, "-m", "qdcore.cli", *args]


def commands(recipe: Path, c: Candidate, steps: int, n: int) -> tuple[list[str], list[str]]:
    # Equal compute means every candidate trains all its steps: the plateau rule would end some
    # early. Eval gets it too, so it finishes an interrupted training under the same rule.
    sets = [a for s in [*c.sets(), "train.stop=budget"] for a in ("-s", s)]
    train = _qd("train", str(recipe), "--iterations", str(steps), *sets, "--quiet")
    score = _qd("eval", str(recipe), "--iterations", str(steps), "--n", str(n), *sets, "--quiet")
    return train, score


def _run(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True)


def train_and_score(
    recipe: Path, rows: list[dict], plan_name: str, n: int, jobs: int, logs: Path, say: Callable[[str], None]
) -> None:
    """Train every row's candidate (up to `jobs` at once), then score it; fills row["eval"]."""
    env = {**os.environ, step_plans.FORCE_ENV: plan_name}
    pending, running = list(rows), []
    while pending or running:
        while pending and len(running) < jobs:
            row = pending.pop(0)
            train_cmd, _ = row["commands"]
            say(f"training {row['name']}: {row['steps']} steps")
            running.append((row, "train", _run(train_cmd, env, logs / f"{row['name']}.log"), time.time()))
        time.sleep(1)
        for item in list(running):
            row, phase, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            out = proc.stdout.read()
            if proc.returncode != 0:
                row["error"] = f"{phase} exited {proc.returncode}: see {logs / (row['name'] + '.log')}"
                say(f"{row['name']}: {row['error']}")
                continue
            row[f"{phase}_wall_s"] = round(time.time() - t0, 1)
            if phase == "train":
                say(f"scoring {row['name']}")
                running.append((row, "eval", _run(row["commands"][1], env, logs / f"{row['name']}.log"), time.time()))
            else:
                row["eval"] = json.loads(out.strip().splitlines()[-1])
                say(f"{row['name']}: {summary(row)}")


def summary(row: dict) -> str:
    e = row.get("eval") or {}
    if not e:
        return row.get("error", "not scored")
    parts = [f"bound {e['bound']:.1f}"]
    if "recognized" in e:
        parts += [
            f"recognized {e['recognized']:.3f}",
            f"frechet {e['frechet']:.1f} ({e['frechet'] / e['frechet_floor']:.1f}x floor)",
        ]
    return ", ".join(parts)


def frontier(
    recipe: Path,
    model: ModelConfig,
    train: TrainConfig,
    minutes: float,
    names: list[str] | None = None,
    n: int = 500,
    jobs: int = 1,
    retime: bool = False,
    time_only: bool = False,
    say: Callable[[str], None] = lambda m: None,
) -> dict:
    cands = by_name(names)
    plan_name = base_plan(model, train, say)
    say(f"step plan for every candidate: {plan_name}")
    speeds = time_candidates(cands, model, train, plan_name, say, retime)
    rows = []
    for c in cands:
        m, t = configs(c, model, train)
        ips = speeds[c.name]["images_per_s"]
        steps = budget_steps(minutes, ips, t.batch_size)
        rows.append(
            {
                "name": c.name,
                "sets": c.sets(),
                "model": m.as_dict(),
                "batch_size": t.batch_size,
                "learning_rate": t.learning_rate,
                "images_per_s": round(ips, 1),
                "timed_busy": speeds[c.name]["busy"],
                "mflop_per_image": round(mflop_per_image(m), 1),
                "steps": steps,
                "images": steps * t.batch_size,
                "commands": commands(recipe, c, steps, n),
            }
        )
    if not time_only:
        train_and_score(recipe, rows, plan_name, n, jobs, cache_dir() / "frontier" / "logs", say)
    for row in rows:
        row["commands"] = [" ".join(["qd", *cmd[3:]]) for cmd in row["commands"]]
    return {"recipe": str(recipe), "minutes": minutes, "plan": plan_name, "n": n, "candidates": rows}


def table(result: dict) -> str:
    head = (
        "| candidate | T | z | enc/dec | read/write | batch | lr | img/s | MFLOP/img | steps | bound "
        "| recognized | Frechet | floor | Frechet/floor |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    ranked = sorted(
        result["candidates"],
        key=lambda r: (
            (r.get("eval") or {}).get("frechet", float("inf"))
            / max((r.get("eval") or {}).get("frechet_floor", 1.0), 1e-9)
        ),
    )
    for r in ranked:
        m, e = r["model"], r.get("eval") or {}
        f = lambda k, fmt: format(e[k], fmt) if k in e else "-"  # noqa: E731
        ratio = f"{e['frechet'] / e['frechet_floor']:.1f}x" if "frechet" in e else "-"
        lines.append(
            f"| {r['name']} | {m['T']} | {m['z_size']} | {m['enc_size']}/{m['dec_size']} | "
            f"{m['read_n']}/{m['write_n']} | {r['batch_size']} | {r['learning_rate']:g} | {r['images_per_s']:,.0f} | "
            f"{r['mflop_per_image']:.0f} | {r['steps']:,} | {f('bound', '.1f')} | {f('recognized', '.3f')} | "
            f"{f('frechet', '.1f')} | {f('frechet_floor', '.2f')} | {ratio} |"
        )
    return "\n".join(lines)
