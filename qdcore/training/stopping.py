"""When training stops before its budget: the plateau rule (`train.stop: plateau`).

`train.iterations` is the most a run trains. Every `check_every` steps the trainer takes one
figure of how well the model fits, in nats per image (lower is better):
  - the held-out bound (L^x + L^z, fixed noise, so two checks differ only by the weights) when
    at least TRUSTED_HOLDOUT images are held out and the run is on one device;
  - else the training loss averaged over the steps since the last check: a few held-out
    drawings (windmill's 25 keep 2) say more about those drawings than about the model.
A check that is not `min_gain` below the best figure so far is flat; `patience` flat checks in
a row stop the run. The best figure only moves on a gain of at least `min_gain`, so a slow
creep (less than `min_gain` over the whole window) counts as flat too. Flat checks count only
from `watch_from(cfg)`: while the learning rate still has more than `decay_left` of its decay
to come, a flat figure is the noise floor of that rate, and the decay still brings gains.

The checks are kept in the model folder (STATE), so a resumed run replays them and stops
where the uninterrupted run would have; a stop is recorded there and in finished.json.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .. import limits
from ..atomic import atomic_path
from ..config import TrainConfig
from ..errors import QdError

STATE = "stop.json"
# Fewer held-out images than this: the training loss is watched instead. At 300 the bound's
# check-to-check change (same images, same noise) is known to ~0.1-0.2 nats; at 2 it is a
# property of two drawings.
TRUSTED_HOLDOUT = 300
# A check evaluates at most this many held-out images: enough to see a change of min_gain
# (see above), and the check costs a few steps' time whatever the category's size.
HELDOUT_CAP = 2000

HELDOUT = "held-out bound"
TRAINING = "training loss"


def rule_of(cfg: TrainConfig) -> dict | None:
    """The stop rule's settings as recorded with a stop; None under `stop: budget`."""
    if cfg.stop == "budget":
        return None
    return {
        "stop": cfg.stop,
        "check_every": cfg.check_every,
        "patience": cfg.patience,
        "min_gain": cfg.min_gain,
        "decay_left": cfg.decay_left,
    }


def watch_from(cfg: TrainConfig) -> int:
    """The first step whose flat check counts: where the cosine schedule (optimizer.WarmupCosine,
    remaining decay 0.5 (1 + cos(pi k / iterations))) has `decay_left` of its decay to come; 0
    under a constant schedule."""
    if cfg.lr_schedule != "cosine" or cfg.decay_left >= 1:
        return 0
    return math.ceil(math.acos(2 * cfg.decay_left - 1) / math.pi * cfg.iterations)


def signal_for(held_out: int, one_device: bool) -> str:
    return HELDOUT if held_out >= TRUSTED_HOLDOUT and one_device else TRAINING


@dataclass
class Plateau:
    """The plateau rule's state: feed it one figure per check; it says when to stop."""

    patience: int
    min_gain: float
    signal: str = TRAINING
    watch_from: int = 0
    checks: list[tuple[int, float]] = field(default_factory=list)
    best: float = math.inf
    best_step: int | None = None
    flat: int = 0

    def observe(self, step: int, value: float) -> bool:
        """Record the figure of the check at `step`; True when the run should stop here."""
        self.checks.append((int(step), float(value)))
        if value < self.best - self.min_gain:
            self.best, self.best_step, self.flat = float(value), int(step), 0
        elif step >= self.watch_from:
            self.flat += 1
        return self.flat >= self.patience

    def reason(self) -> str:
        return (
            f"{self.signal} flat for {self.flat} checks (no gain of {self.min_gain:g} nats/image "
            f"on {self.best:.2f} since step {self.best_step})"
        )

    def to_dict(self, rule: dict) -> dict:
        return {"rule": rule, "signal": self.signal, "checks": [list(c) for c in self.checks]}

    @classmethod
    def resumed(cls, cfg: TrainConfig, signal: str, record: dict | None, upto: int) -> "Plateau":
        """A fresh rule, or the recorded one's checks up to step `upto` replayed (a resumed
        run decides as the uninterrupted one did). Checks of another rule or signal are
        dropped: the new rule watches from here."""
        rule = cls(cfg.patience, cfg.min_gain, signal, watch_from(cfg))
        if record and record.get("rule") == rule_of(cfg) and record.get("signal") == signal:
            for step, value in record.get("checks", []):
                if step <= upto:
                    rule.observe(step, value)
        return rule


def read_state(workdir: Path) -> dict | None:
    """The stop rule's record, or None: none yet, or damaged. A damaged one (not JSON, too
    large, or not a rule with its checks as [step, finite figure] pairs) is moved aside with
    one warning and the rule starts watching afresh: a record never blocks a run."""
    path = Path(workdir) / STATE
    if not path.exists():
        return None
    try:
        value = json.loads(limits.read_text(path, limits.MAX_JSON_FILE_BYTES, "not one of qd's records"))
        problem = _problem(value)
    except (OSError, ValueError, RecursionError, QdError) as e:
        value, problem = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if problem is None:
        return value
    warnings.warn(f"{path} is damaged ({problem}); moved it to {path.name}.damaged, the stop rule watches afresh")
    try:
        os.replace(path, path.with_name(path.name + ".damaged"))
    except OSError:
        pass  # a read-only folder: the record stays ignored
    return None


def _problem(value) -> str | None:
    """What is wrong with a stop record, or None when it is one write_state could have made."""
    if not isinstance(value, dict):
        return f"a {type(value).__name__}, not a record"
    if not isinstance(value.get("rule"), (dict, type(None))) or not isinstance(value.get("signal"), (str, type(None))):
        return "its rule or signal is not what qd writes"
    checks = value.get("checks", [])
    ok = isinstance(checks, list) and all(
        isinstance(c, list)
        and len(c) == 2
        and isinstance(c[0], int)
        and not isinstance(c[0], bool)
        and c[0] >= 0
        and isinstance(c[1], (int, float))
        and not isinstance(c[1], bool)
        and math.isfinite(c[1])
        for c in checks
    )
    return None if ok else "its checks are not [step, figure] pairs"


def write_state(workdir: Path, state: dict) -> None:
    with atomic_path(Path(workdir) / STATE) as tmp:
        tmp.write_text(json.dumps(state))


def needs_more(finished: dict, cfg: TrainConfig) -> bool:
    """Whether a finished model trains on under `cfg`: only one stopped early by another rule
    (`stop: budget` after a plateau stop, or other plateau settings). A model stopped by this
    very rule, or trained to its budget, is done."""
    stopped = finished.get("stopped")
    return isinstance(stopped, dict) and stopped.get("rule") != rule_of(cfg)


def describe(cfg: TrainConfig, signal: str, multi_worker: bool = False) -> str:
    if cfg.stop == "budget":
        return "trains the whole budget (stop: budget)"
    if multi_worker:
        return "trains the whole budget (a multi-worker run does not stop early)"
    what = f"training loss (mean of each {cfg.check_every} steps)" if signal == TRAINING else "held-out bound"
    start = watch_from(cfg)
    when = f", from step {start:,} (decay_left {cfg.decay_left:g})" if start else ""
    return (
        f"stops earlier when the {what} gains less than {cfg.min_gain:g} nats/image in "
        f"{cfg.patience} checks, one every {cfg.check_every} steps{when} (stop: plateau)"
    )


def budget_eta(steps: int, batch_size: int, images_per_s: float | None) -> str:
    """'about 45 min' for `steps` at the measured rate; '' when the plan was not measured."""
    if not images_per_s:
        return ""
    return f"about {duration(steps * batch_size / images_per_s)}"


def duration(seconds: float) -> str:
    """A wait as a person reads it: '40 s', '45 min', '2.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
