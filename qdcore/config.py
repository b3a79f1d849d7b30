"""Model, training and generation settings: the one place their names and defaults live.

Kept free of TensorFlow so that validating a recipe stays fast; `draw.py` and `train.py`
read these dataclasses. A recipe's `model:`, `train:` and `generate:` sections are checked
against these signatures exactly like a plugin's parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

from .params import Range

# A random seed: numpy's generators and TensorFlow's stateless ops take any of these; a
# negative one is refused when the recipe is checked, not by numpy after the data loaded.
Seed = Annotated[int, Range(0, 2**63 - 1)]


@dataclass(frozen=True)
class ModelConfig:
    """DRAW (Gregor et al. 2015). Defaults are the blog's / ericjang's configuration."""

    height: Annotated[int, Range(2, 512)] = 28
    width: Annotated[int, Range(2, 512)] = 28
    T: Annotated[int, Range(1, 256)] = 10
    enc_size: Annotated[int, Range(1, 4096)] = 256
    dec_size: Annotated[int, Range(1, 4096)] = 256
    z_size: Annotated[int, Range(1, 1024)] = 10
    attention: bool = True
    read_n: Annotated[int, Range(1, 64)] = 5
    write_n: Annotated[int, Range(1, 64)] = 5

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """Cycling trainer settings. Defaults are qd's (see docs/performance.md for why)."""

    iterations: Annotated[int, Range(0, 10_000_000)] = 10_000
    # 4x the blog's batch with 2x its learning rate: with `precision` below, 2.6-2.8x the
    # images/s of a plain TF2 version of the blog's model at batch 100 (1.8-1.9x float32-only),
    # and a better held-out bound per minute (docs/performance.md).
    batch_size: Annotated[int, Range(1, 100_000)] = 400
    learning_rate: Annotated[float, Range(1e-7, 1.0)] = 2e-3
    beta1: Annotated[float, Range(0.0, 0.999999)] = 0.5
    clip_norm: Annotated[float, Range(0.0, 1e6)] = 5.0
    holdout: Annotated[float, Range(0.0, 0.9)] = 0.1
    checkpoint_every: Annotated[int, Range(1, 10_000_000)] = 1000
    seed: Seed = 0
    # Learning-rate schedule: linear warmup over `warmup` steps (at most a tenth of
    # `iterations`), then constant, or a cosine decay to lr_final_fraction * learning_rate
    # at `iterations`. The warmup keeps the larger learning rate from upsetting Adam's
    # early, poorly estimated moments.
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_final_fraction: Annotated[float, Range(0.0, 1.0)] = 0.05
    warmup: Annotated[int, Range(0, 10_000_000)] = 200
    # Matmul arithmetic while training. "bfloat16" runs the LSTM and output matmuls on the
    # CPU's bfloat16 units (AMX, AVX512-BF16) and everything else in float32; "float32"
    # keeps everything float32. "auto" takes the step plan (qdcore/training/plan.py) measured
    # fastest here, of either arithmetic. Evaluation and generation are always float32.
    # See docs/performance.md.
    precision: Literal["auto", "bfloat16", "float32"] = "auto"
    # Where the step runs (docs/distributed.md): "auto" uses every local GPU through
    # MirroredStrategy when TensorFlow sees more than one, else the single-device step above;
    # "none" always the single-device step; "mirrored" MirroredStrategy over local devices;
    # "multi-worker" MultiWorkerMirroredStrategy configured by TF_CONFIG.
    distribute: Literal["auto", "none", "mirrored", "multi-worker"] = "auto"
    # When to stop before `iterations` (qdcore/training/stopping.py; docs/recipes.md, "When training
    # stops"): "plateau" stops once `patience` checks in a row, every `check_every` steps,
    # have not brought the held-out bound (the training loss where fewer than 300 images are
    # held out) `min_gain` nats per image below its best; "budget" trains all `iterations`.
    stop: Literal["plateau", "budget"] = "plateau"
    check_every: Annotated[int, Range(1, 10_000_000)] = 100
    patience: Annotated[int, Range(1, 10_000)] = 5
    min_gain: Annotated[float, Range(0.0, 1e6)] = 1.0
    # Flat checks count only once at most this fraction of the learning rate's decay is still
    # to come: the last third of a cosine schedule's iterations at 0.25; from the start under
    # a constant schedule, or at 1.0. A plateau at a high learning rate is the noise floor of
    # that rate, not the end of learning: cat stopped at 40% of its budget lost 5.5 nats of
    # held-out bound and went from 7.4x to 11.7x the Frechet floor (docs/performance.md).
    decay_left: Annotated[float, Range(0.0, 1.0)] = 0.25

    # Settings that choose how a run executes, not what it learns: they stay out of the
    # model's cache key, so a run started on one machine can be resumed on several. The
    # stop rule is among them: it only decides where a run ends on one trajectory (batch k,
    # its noise and the learning rate at k depend on neither), so a run stopped early and
    # one trained to the budget share a folder, and keys from before the rule existed hold.
    EXECUTION_ONLY = ("distribute", "stop", "check_every", "patience", "min_gain", "decay_left")

    def as_dict(self) -> dict:
        return asdict(self)

    def key_dict(self) -> dict:
        """as_dict() without EXECUTION_ONLY settings: what a cached model's key hashes."""
        return {k: v for k, v in asdict(self).items() if k not in self.EXECUTION_ONLY}


# A model that starts from another's weights (`model.start`: fine-tuning, docs/recipes.md,
# "Starting from a pack") takes these for the `train:` keys its recipe leaves out. Measured on
# the 25 windmills with zoo-26 (docs/finetune.md): the pack's weights are already near a good
# model, so a short budget; the plateau rule watches from the first check (decay_left 1), so a
# large set stops once its held-out bound stops improving.
WARM_START_TRAIN = {"iterations": 1000, "learning_rate": 4e-3, "warmup": 50, "decay_left": 1.0}
# How a category the start was not conditioned on gets its class row (qdcore/training/warm_start.py):
# "closest", the row under which its training drawings score best. Part of the cache key.
WARM_START_ROWS = "closest"


@dataclass(frozen=True)
class GenerateConfig:
    """How many pictures to make. Whether they come from the prior or from seed images is
    decided by the `seeds:` chain (a `prior` source, or an image source)."""

    n: Annotated[int, Range(1, 10_000)] = 16
    # Draw best_of x n candidates and keep the n the recipe's recognizer is most confident
    # show the recipe's category (qdcore/recognizer.py). 1 keeps every picture drawn.
    best_of: Annotated[int, Range(1, 64)] = 1

    def as_dict(self) -> dict:
        return asdict(self)
