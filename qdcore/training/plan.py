"""The step plan: how this machine runs a training step, chosen by measuring it.

A plan fixes the arithmetic of the big matmuls (float32 or bfloat16), whether the step is
compiled by XLA, TensorFlow's thread pools, how many independent streams the batch is split
into, and the device. Which one is fastest depends on the CPU (AMX, AVX512-BF16, neither),
its cores, TensorFlow's version and the model's shape, so no flag can say: `train.precision:
auto` times every candidate for a few steps, each in a fresh process (thread pools are
process-wide and fixed once TensorFlow starts), and caches the winner as JSON under
`paths.cache_dir()/plans/`, keyed by what decides it (`key_fields`). docs/performance.md has
the measurements behind the candidates. Where every measurement so far agrees (a CPU, no
GPU), the plan the CPU's flags predict is not timed apart: the training's own first steps
time it (`Trial`), so choosing costs no second trace of the step.

This module imports TensorFlow only inside the functions that need it (the device list, the
version, the thread pools), so building candidates and keys stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import locks
from ..atomic import atomic_path
from ..config import ModelConfig, TrainConfig
from ..errors import TrainingError
from ..paths import cache_dir

FORMAT = 1  # bump when the candidates or their meaning change: old cache entries are ignored
# Set to 1 to leave the bfloat16 candidates out, as on a float32-only CPU.
NO_BF16_ENV = "QD_PLAN_NO_BF16"
# Set to a candidate's name to use it without measuring (benchmarks, debugging).
FORCE_ENV = "QD_STEP_PLAN"
# Set to "all" to time every candidate (as `qd bench train` does), or to "finalist" to time
# the predicted plan in a fresh process before training instead of in its first steps.
MEASURE_ENV = "QD_PLAN_MEASURE"
# Streams are at most one per core (4 streams on 2 cores were no faster than 1) and hold at
# least this many images: at batch 20 on 2 cores, two streams of 10 (several steps a call,
# stacked kernel gradients) ran 1.2-1.3x one stream's images/s, which left a core idle; at
# batch 8, two streams of 4 were no faster (docs/performance.md).
MIN_STREAM = 10
# Timed steps per candidate (after timing.WARMUP_STEPS untimed ones, which include tracing
# and XLA compilation): enough to rank plans whose speeds differ by 1.2x or more.
MEASURE_STEPS = 10
# Measuring costs roughly half a minute per candidate at the default model; a run whose whole
# budget is fewer images than this (500 steps of 400) would spend more time measuring than it
# could save, so it takes the cached winner if there is one, and otherwise `short_run_plan`.
# Counted in images, not steps: a fine-tune of 1,000 steps of 23 windmills is 23,000 images,
# about 20-70 s of training, and measuring four plans at batch 23 took 70-90 s.
MEASURE_MIN_IMAGES = 200_000
# A short run with nothing cached compiles its step (XLA) when it has at least this many steps
# of a batch under SHORT_XLA_BELOW_BATCH: there most of a step is per-op overhead, which
# XLA's fused step removes (batch 20 on a quiet Zen 4: 1,030-1,111 against 516-521 img/s
# uncompiled), and its compile (about 5 s more than the uncompiled first step) is repaid after
# about 260 steps; 400 leaves room for a slower compile.
SHORT_XLA_MIN_STEPS = 400
SHORT_XLA_BELOW_BATCH = 100


def is_short(train_cfg: TrainConfig) -> bool:
    """A run too short to be worth measuring the step plans for (MEASURE_MIN_IMAGES)."""
    return train_cfg.iterations * train_cfg.batch_size < MEASURE_MIN_IMAGES


# Other work on the cores while the candidates are timed can rank them wrongly: two trainings
# started together here each timed bfloat16-streams at 2,116 img/s, below float32-streams'
# 2,322, where a quiet machine gives 3,250 and 2,257. When other processes keep more than
# this share of the cores busy as measuring starts (sampled for BUSY_SAMPLE_SECONDS, while
# this process waits), the winner is cached as measured on a busy machine, and the next long
# run that starts on a quiet one measures again. Not the load average: it lags a minute, so
# it calls the machine busy just after the previous qd run ended.
BUSY_SHARE = 0.25
BUSY_SAMPLE_SECONDS = 0.5


@dataclass(frozen=True)
class StepPlan:
    """One way to run a training step."""

    precision: str  # arithmetic of the LSTM and output matmuls: "float32" or "bfloat16"
    jit_compile: bool  # XLA; with streams > 1, one XLA cluster per stream
    streams: int = 1  # the batch is split into this many independent parts
    threads: tuple[int, int] | None = None  # (intra-op, inter-op); None: TensorFlow's defaults
    device: str = "cpu"  # "cpu" or "gpu"
    name: str = ""  # the candidate's name (the cache and QD_STEP_PLAN use it)

    def describe(self) -> str:
        parts = [
            self.device.upper() if self.device != "cpu" else None,
            f"{self.precision} matmuls",
            "XLA" if self.jit_compile else "no XLA",
            f"{self.streams} streams" if self.streams > 1 else None,
            f"{self.threads[0]}+{self.threads[1]} threads" if self.threads else None,
        ]
        return (f"{self.name}: " if self.name else "") + ", ".join(p for p in parts if p)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StepPlan":
        d = dict(d)
        if d.get("threads") is not None:
            d["threads"] = tuple(int(t) for t in d["threads"])
        return cls(**d)


# -- what decides the plan ----------------------------------------------------------------


def cpu_count() -> int:
    """Cores this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_info() -> dict:
    """CPU model and feature flags (Linux /proc/cpuinfo; elsewhere what `platform` knows)."""
    model, flags = "", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "CPU part") and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:  # x86, aarch64
                    flags = sorted(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(), "flags": flags, "machine": platform.machine()}


BF16_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}  # x86 AMX, x86 AVX512, aarch64 (Linux "Features")


def cpu_has_bf16(info: dict | None = None) -> bool:
    """True when the CPU lists bfloat16 instructions, or lists no flags at all (macOS,
    Windows): then the bfloat16 candidate is measured like any other and loses if emulated."""
    info = cpu_info() if info is None else info
    return not info["flags"] or bool(BF16_FLAGS & set(info["flags"]))


def bf16_allowed(info: dict | None = None) -> bool:
    return os.environ.get(NO_BF16_ENV, "").strip() not in ("1", "true", "yes") and cpu_has_bf16(info)


def gpu_names() -> list[str]:
    """The GPUs TensorFlow sees (listing them does not start TensorFlow's runtime)."""
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except Exception:  # noqa: BLE001 - details are optional; the device still counts
            details = {}
        names.append(f"{gpu.name} {details.get('device_name', '')}".strip())
    return names


# -- the candidates -------------------------------------------------------------------------


def candidates(batch_size: int, cores: int, bf16: bool, gpus: list[str], precision: str = "auto") -> list[StepPlan]:
    """The plans worth timing here, the plain float32 XLA step first (the fallback).

    float32-xla: the whole step one XLA cluster, TensorFlow's default threads.
    float32-streams / bfloat16-streams: uncompiled (TensorFlow's oneDNN kernels, which use
        AMX or AVX512-BF16 for bfloat16 where XLA's CPU backend does not), one intra-op
        thread and one inter-op thread per core, the batch split into one stream per core,
        so each core runs a stream of small ops instead of both sharing every op.
    float32-xla-streams: one XLA cluster per stream, the clusters running side by side on
        the inter-op threads: few, large kernels and every core busy.
    gpu-*: the whole step compiled by XLA on the first GPU, in float32 and with bfloat16
        matmuls (mixed precision; bfloat16 needs no loss scaling). Never measured by us: no
        GPU here (docs/performance.md).
    `precision` other than "auto" keeps only the candidates of that arithmetic.
    """
    streams = max(1, min(cores, batch_size // MIN_STREAM))
    pools = (1, cores) if cores > 1 else None
    plans = []
    if gpus:
        plans += [
            StepPlan("float32", True, device="gpu", name="gpu-float32-xla"),
            StepPlan("bfloat16", True, device="gpu", name="gpu-bfloat16-xla"),
        ]
    plans.append(StepPlan("float32", True, name="float32-xla"))
    if pools:
        plans.append(StepPlan("float32", True, streams, pools, name="float32-xla-streams"))
        plans.append(StepPlan("float32", False, streams, pools, name="float32-streams"))
    if bf16:
        plans.append(StepPlan("bfloat16", False, streams, pools, name="bfloat16-streams"))
    if precision != "auto":
        plans = [p for p in plans if p.precision == precision]
    if not gpus:  # CPU-only: the first is the plain XLA step; with a GPU, the GPU's
        plans.sort(key=lambda p: p.name != "float32-xla")
    # On one core, or a batch too small to split, several candidates are the same step.
    seen, unique = set(), []
    for p in plans:
        what = (p.precision, p.jit_compile, p.streams, p.threads, p.device)
        if what not in seen:
            seen.add(what)
            unique.append(p)
    return unique


def key_fields(
    model_cfg: ModelConfig,
    batch_size: int,
    plans: list[StepPlan],
    info: dict,
    cores: int,
    tf_version: str,
    gpus: list[str],
) -> dict:
    """Everything that decides which plan wins (and nothing else: not the data, not the
    learning rate)."""
    return {
        "format": FORMAT,
        "cpu": info["model"],
        "machine": info["machine"],
        "flags": info["flags"],
        "cores": cores,
        "tensorflow": tf_version,
        "model": model_cfg.as_dict(),
        "batch_size": batch_size,
        "devices": gpus,
        "candidates": [p.name for p in plans],
    }


def cache_path(fields: dict) -> Path:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "plans" / f"{digest}.json"


# -- measuring --------------------------------------------------------------------------------

# The timing child: `python -m qdcore.training.timing SPEC` times qd's step (timing.measure).
TIMING_CHILD = ("qdcore.training.timing",)


def run_child(spec: dict, command: tuple[str, ...] = TIMING_CHILD) -> dict:
    """One measurement in a fresh Python process: `python -m <command> SPEC`, by default the
    timing child (`timing.measure(spec)`); the benchmarks pass their own, which also times
    their reference model.

    Its stderr (TensorFlow's logs) is shown only on failure."""
    proc = subprocess.run([sys.executable, "-m", *command, json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise TrainingError(f"timing process for {spec} failed (exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_plan(plan: StepPlan, model_cfg: ModelConfig, batch_size: int, steps: int = MEASURE_STEPS) -> dict:
    """qd's training step under `plan` on synthetic data, timed in a fresh process."""
    return run_child(
        {
            "kind": "qd",
            "plan": plan.as_dict(),
            "model": model_cfg.as_dict(),
            "batch_size": batch_size,
            "iterations": steps,
        }
    )


@dataclass
class Choice:
    """The plan to use, and where it came from."""

    plan: StepPlan
    how: str  # "measured", "cached", "forced", "only", "unmeasured", "predicted" (timed by a Trial)
    rows: list[dict] = field(default_factory=list)  # {"name", "images_per_s" (median step)} per candidate
    path: Path | None = None
    note: str = ""  # said to the user when the plan had to change in this process
    key: dict = field(default_factory=dict)  # key_fields, written beside a trial's result
    busy: bool = False  # other work kept the cores busy when the plan was chosen

    def label(self) -> str:
        """The plan as the progress bar names it (short: rich cuts a long description)."""
        return f"{self.plan.name or self.plan.describe()}, {self.how}"


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all cores since boot, from Linux's /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user..steal


def busy_share(seconds: float = BUSY_SAMPLE_SECONDS) -> float | None:
    """The share of all cores other processes keep busy, sampled over `seconds` (this process
    only sleeps meanwhile); None where the kernel does not say (not Linux)."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(seconds)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def machine_busy() -> bool:
    """True when other work keeps more than BUSY_SHARE of the cores busy right now."""
    share = busy_share()
    return share is not None and share > BUSY_SHARE


def _read_cache(path: Path, plans: list[StepPlan]) -> tuple[StepPlan, list[dict], bool] | None:
    """(cached winner, its rows, measured on a busy machine?), or None when absent; a file
    that is not what we wrote is None too, and so is a trial that never ended (`Trial`)."""
    try:
        data = json.loads(path.read_text())
        if "trial" in data:
            return None
        by_name = {p.name: p for p in plans}
        winner = by_name[data["winner"]]
        rows = [{"name": str(r["name"]), "images_per_s": float(r["images_per_s"])} for r in data["rows"]]
        if StepPlan.from_dict(data["plan"]) != winner:
            return None
        return winner, rows, bool(data.get("busy", False))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# Which candidate a fresh machine times (`finalists`): the one its CPU's flags predict, from
# every full measurement recorded in docs/performance.md. Where the CPU has bfloat16
# instructions (AMX, AVX512-BF16) bfloat16-streams won at every batch measured (batch 400:
# 1.5-1.6x float32-streams; batch 20: 1,292 img/s against float32-xla's 1,099 on a Zen 4).
# Without them, float32-streams won at a batch split into streams (Xeon, Zen 4 with bfloat16
# left out, the Zen 3 of issue 28; batch 23 in two streams of 11-12 on the Zen 4: 1,176-1,411
# img/s against float32-xla's 1,176-1,251), and the compiled float32-xla in one stream (batch 23
# on the Xeon and the Zen 3, when a stream held at least 50 images). Timing it confirms it
# runs here and gives its speed for the plan line; timing a second plan in the same process
# doubled the choice's ~13 s (a fresh TensorFlow, the step's trace, its steps). If it cannot
# run, the others are timed.
FINALISTS_STREAMS = ("bfloat16-streams", "float32-streams")
FINALISTS_ONE_STREAM = ("bfloat16-streams", "float32-xla")


def finalists(plans: list[StepPlan]) -> list[StepPlan]:
    """The candidates worth timing on this machine: the first of the finalists that is a
    candidate here (every candidate with QD_PLAN_MEASURE=all, or with a GPU, where nothing
    here was ever measured)."""
    if _measure_env() == "all" or any(p.device != "cpu" for p in plans):
        return plans
    by_name = {p.name: p for p in plans}
    names = FINALISTS_STREAMS if any(p.streams > 1 for p in plans) else FINALISTS_ONE_STREAM
    return [by_name[n] for n in names if n in by_name][:1] or plans


def _measure_env() -> str:
    return os.environ.get(MEASURE_ENV, "").strip()


def time_plans(plans: list[StepPlan], model_cfg: ModelConfig, batch_size: int, steps: int = MEASURE_STEPS) -> list:
    """Each plan's timing row (or a TrainingError in its place), in as few fresh processes as
    their thread pools allow: plans with the same pools are timed one after another in one."""
    groups: dict = {}
    for p in plans:
        groups.setdefault(p.threads, []).append(p)
    rows = {}
    for group in groups.values():
        spec = {"kind": "group", "plans": [p.as_dict() for p in group], "model": model_cfg.as_dict()}
        try:
            out = run_child({**spec, "batch_size": batch_size, "iterations": steps})
        except TrainingError as e:
            out = {"rows": [{"name": p.name, "error": str(e)} for p in group]}
        for p, row in zip(group, out["rows"]):
            rows[p.name] = TrainingError(row["error"]) if "error" in row else row
    return [rows[p.name] for p in plans]


def short_run_plan(plans: list[StepPlan], train_cfg: TrainConfig) -> StepPlan:
    """The plan of a short run with nothing cached: on a CPU, the first candidate's arithmetic
    in one stream, at TensorFlow's default threads, uncompiled: XLA compiling the default
    model's step takes about 6 s more than TensorFlow's first uncompiled step (11.7 s against
    5.4 s here), and later steps ran at the same speed (0.21 s at batch 400), so for a few
    hundred steps compiling cannot pay (docs/performance.md). Except for a batch under
    SHORT_XLA_BELOW_BATCH and at least SHORT_XLA_MIN_STEPS steps: there the compiled step is
    twice as fast."""
    first = plans[0]
    if first.device != "cpu":
        return first
    small = train_cfg.batch_size < SHORT_XLA_BELOW_BATCH and train_cfg.iterations >= SHORT_XLA_MIN_STEPS
    return StepPlan(first.precision, small, name=f"{first.precision}-xla" if small else first.precision)


def save(path: Path, fields: dict, winner: StepPlan, rows: list[dict], busy: bool = False) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps(
                {"key": fields, "winner": winner.name, "plan": winner.as_dict(), "rows": rows, "busy": busy}, indent=1
            )
        )


def best(rows: list[dict], plans: list[StepPlan]) -> StepPlan:
    by_name = {p.name: p for p in plans}
    return by_name[max((r for r in rows if r["name"] in by_name), key=lambda r: r["images_per_s"])["name"]]


def choose(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    say: Callable[[str], None] = lambda m: None,
    measure: Callable[..., dict] | None = None,
    info: dict | None = None,
    cores: int | None = None,
    gpus: list[str] | None = None,
    tf_version: str | None = None,
    busy: bool | None = None,
) -> Choice:
    """The plan for this training run: forced, the only candidate, cached, or measured now.

    The keyword arguments after `measure` replace what would be read from this machine
    (tests fake a GPU, a CPU without bfloat16 or a busy machine through them).
    """
    info = cpu_info() if info is None else info
    cores = cpu_count() if cores is None else cores
    gpus = gpu_names() if gpus is None else gpus
    if tf_version is None:
        import tensorflow as tf

        tf_version = tf.__version__
    # A recipe that asks for bfloat16 gets it on any CPU (emulated where the CPU has no
    # bfloat16 instructions); only auto leaves the candidate out there.
    bf16 = train_cfg.precision == "bfloat16" or bf16_allowed(info)
    plans = candidates(train_cfg.batch_size, cores, bf16, gpus, train_cfg.precision)
    forced = os.environ.get(FORCE_ENV, "").strip()
    if forced:
        by_name = {p.name: p for p in plans}
        if forced not in by_name:
            raise TrainingError(f"{FORCE_ENV}={forced}: no such step plan here. Available names: {', '.join(by_name)}")
        return Choice(by_name[forced], "forced")
    if len(plans) == 1:
        return Choice(plans[0], "only")
    fields = key_fields(model_cfg, train_cfg.batch_size, plans, info, cores, tf_version, gpus)
    path = cache_path(fields)
    cached = _read_cache(path, plans)
    if cached and (not cached[2] or is_short(train_cfg)):
        return Choice(cached[0], "cached", cached[1], path)
    if is_short(train_cfg):
        return Choice(short_run_plan(plans, train_cfg), "unmeasured", [], path)
    # Sampled only now (it takes half a second): a cached quiet measurement needs no look.
    busy = machine_busy() if busy is None else busy
    if _usable(cached, busy):
        return Choice(cached[0], "cached", cached[1], path)
    timed, died = finalists(plans), _died_in_trial(path)
    if died:
        say(
            f"the last run that tried step plan {died} ended before its first steps were timed; "
            "timing the step plans in a fresh process instead"
        )
    elif len(timed) < len(plans) and _measure_env() != "finalist":
        return Choice(timed[0], "predicted", [], path, key=fields, busy=busy)
    return _measure(model_cfg, train_cfg, plans, fields, path, busy, say, measure)


def _usable(cached, busy: bool) -> bool:
    """A cached winner to take: a busy machine's ranking is redone once the machine is quiet."""
    return cached is not None and (not cached[2] or busy)


def _measure(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    plans: list[StepPlan],
    fields: dict,
    path: Path,
    busy: bool,
    say: Callable[[str], None],
    measure: Callable[..., dict],
) -> Choice:
    """Time every candidate and cache the winner, unless another run measured it meanwhile.

    One measurement at a time per key: a second run started meanwhile waits for it and
    takes its winner, instead of timing the plans against the first one's measuring."""
    with locks.hold(path.with_suffix(".lock"), "measuring the step plans", say):
        cached = _read_cache(path, plans)
        if _usable(cached, busy):
            return Choice(cached[0], "cached", cached[1], path)
        if cached:
            say("the cached step plan was measured on a busy machine; measuring again now that it is quiet")
        elif path.exists():
            say(f"step plan cache {path} is unreadable; measuring again")
        if busy:
            say(
                "other work keeps the cores busy: the plan measured now may not be the fastest; "
                "the next run that starts on a quiet machine measures again"
            )
        timed = finalists(plans)
        what = f"{len(plans)} step plans" if len(timed) == len(plans) else f"{len(timed)} of {len(plans)} step plans"
        say(
            f"measuring {what} on this machine ({', '.join(p.name for p in timed)}); "
            f"this happens once, the winner is cached in {path.parent}"
        )
        rows = _timed_rows(timed, model_cfg, train_cfg.batch_size, say, measure)
        if not rows and len(timed) < len(plans):  # no finalist runs here: the others may
            rows = _timed_rows([p for p in plans if p not in timed], model_cfg, train_cfg.batch_size, say, measure)
        if not rows:
            raise TrainingError("no step plan could run on this machine; run `qd bench train` for the details")
        winner = best(rows, plans)
        save(path, fields, winner, rows, busy)
        say(
            "step plans: "
            + ", ".join(f"{r['name']} {r['images_per_s']:.0f} img/s" for r in rows)
            + f"; using {winner.name}"
        )
        return Choice(winner, "measured", rows, path)


def _timed_rows(plans, model_cfg, batch_size, say, measure) -> list[dict]:
    """{"name", "images_per_s"} of each plan that ran; one that cannot run here (say, no XLA
    for this GPU) just loses, said in one line."""
    if measure is None:
        results = time_plans(plans, model_cfg, batch_size)
    else:
        results = []
        for p in plans:
            try:
                results.append(measure(p, model_cfg, batch_size))
            except TrainingError as e:
                results.append(e)
    rows = []
    for p, r in zip(plans, results):
        if isinstance(r, TrainingError):
            say(f"step plan {p.name} failed to run and is left out: {r}")
        else:
            rows.append({"name": p.name, "images_per_s": float(r["images_per_s_median"])})
    return rows


# -- a predicted plan, timed as the training's first steps -----------------------------------

# A trial's record in the cache says which process is trying which plan. When that process
# ended without timing it (killed, or the plan crashed it), the next run times the plans in a
# fresh process as before: a plan that cannot run here cannot take every run down with it.
# Calls left out of a trial: the first traces the step (and XLA compiles it); the second
# still ran slower in the timing child (timing.WARMUP_STEPS = 3 one-step calls).
WARMUP_CALLS = 2


def _died_in_trial(path: Path) -> str | None:
    """The plan an earlier run was trying when it ended before its steps were timed."""
    try:
        data = json.loads(path.read_text())
        pid, name = int(data["trial"]["pid"]), str(data["winner"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return name
    except OSError:  # alive, another user's
        return None
    return None


class Trial:
    """The predicted plan's speed, from the training's own steps. The first calls trace (and
    compile) the step, as the timing child's warm-up steps do, and are left out; the median
    of the next calls' seconds per step gives images/s, cached as a measurement would be."""

    def __init__(self, choice: Choice, batch_size: int):
        self.choice, self.batch_size = choice, batch_size
        self.warm, self.per_step, self.steps = 0, [], 0
        with atomic_path(choice.path) as tmp:
            record = {"key": choice.key, "winner": choice.plan.name, "plan": choice.plan.as_dict(), "rows": []}
            tmp.write_text(json.dumps({**record, "busy": choice.busy, "trial": {"pid": os.getpid()}}, indent=1))

    @classmethod
    def of(cls, choice: Choice, batch_size: int) -> "Trial | None":
        """A trial when the plan was predicted and runs as predicted (apply() kept it)."""
        if choice.how != "predicted" or choice.note or choice.path is None:
            return None
        return cls(choice, batch_size)

    def observe(self, steps: int, seconds: float) -> Choice | None:
        """One call's steps and seconds; the measured Choice once enough steps were timed."""
        if not steps:
            return None
        if self.warm < WARMUP_CALLS:
            self.warm += 1
            return None
        self.per_step.append(seconds / steps)
        self.steps += steps
        return self._result() if self.steps >= MEASURE_STEPS else None

    def end(self) -> None:
        """The run ended well before the trial had its steps (a resumed run's last few): the
        plan ran, so its record must not read as a run that died; what was timed is kept."""
        if self.per_step:
            self._result()
        else:
            with contextlib.suppress(OSError, ValueError, AttributeError):  # gone, or not ours to judge
                if json.loads(self.choice.path.read_text()).get("trial", {}).get("pid") == os.getpid():
                    self.choice.path.unlink()

    def _result(self) -> Choice:
        per_step = sorted(self.per_step)[len(self.per_step) // 2]
        rows = [{"name": self.choice.plan.name, "images_per_s": round(self.batch_size / per_step, 1)}]
        c = self.choice
        save(c.path, c.key, c.plan, rows, c.busy)
        return replace(c, how="measured", rows=rows)


def known_speed(model_cfg: ModelConfig, train_cfg: TrainConfig) -> float | None:
    """The images/s at which the cached winner ran this model and batch here, without
    measuring anything: None when nothing was measured yet (or a plan is forced)."""
    import tensorflow as tf

    if os.environ.get(FORCE_ENV, "").strip():
        return None
    info, cores, gpus = cpu_info(), cpu_count(), gpu_names()
    plans = candidates(
        train_cfg.batch_size, cores, train_cfg.precision == "bfloat16" or bf16_allowed(info), gpus, train_cfg.precision
    )
    cached = _read_cache(
        cache_path(key_fields(model_cfg, train_cfg.batch_size, plans, info, cores, tf.__version__, gpus)), plans
    )
    if cached is None:
        return None
    winner, rows, _ = cached
    return next((r["images_per_s"] for r in rows if r["name"] == winner.name), None)


# -- applying a plan in this process --------------------------------------------------------


def apply(choice: Choice) -> Choice:
    """Set the plan's thread pools in this process, or fall back when TensorFlow has already
    started with others: a float32 plan falls back to the plain float32 XLA step, a bfloat16
    one to one stream on the threads TensorFlow has. The returned Choice's note says so."""
    import tensorflow as tf

    plan = choice.plan
    if plan.threads is None:
        return choice
    intra, inter = plan.threads
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        return choice
    except RuntimeError:  # TensorFlow already started in this process; its pools are fixed
        pass
    now = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    if now == (intra, inter):
        return choice
    if plan.precision == "bfloat16":  # keep the arithmetic the user or the measurement chose
        fallback = StepPlan("bfloat16", False, name="bfloat16")
    else:
        fallback = StepPlan("float32", True, name="float32-xla")
    note = (
        f"step plan {plan.name} needs {intra}+{inter} threads, but TensorFlow already started in this "
        f"process with {now[0]}+{now[1]} (0 = its default); using {fallback.describe()}"
    )
    return replace(choice, plan=fallback, note=note)
