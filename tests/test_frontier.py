"""qd bench frontier: candidates are valid recipes, equal compute means steps from measured speed,
timings are measured once per machine and plan, and the table ranks by Frechet / floor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qdcore.bench import bench_frontier as bf
from qdcore.training import plan as P
from qdcore.cli import _recipe
from qdcore.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "recipes" / "cat-quality.yaml"


def test_every_candidate_is_a_valid_override_of_the_recipe():
    base = _recipe(CAT)
    names = [c.name for c in bf.CANDIDATES]
    assert len(names) == len(set(names)) >= 8
    for c in bf.CANDIDATES:
        r = _recipe(CAT, sets=c.sets())  # validated exactly like the keys in a file
        model, train = bf.configs(c, base.model, base.train)
        assert (r.model, r.train) == (model, train), c.name
    changed = {k for c in bf.CANDIDATES for k in {**c.model, **c.train}}
    # the axes: glimpses, latent, LSTM sizes, read/write windows, learning rate / batch
    assert {"T", "z_size", "enc_size", "dec_size", "read_n", "batch_size", "learning_rate"} <= changed


def test_every_candidate_trains_its_whole_budget_and_is_scored_on_that_model():
    for c in bf.CANDIDATES:
        train, score = bf.commands(CAT, c, 1234, 500)
        t = _recipe(CAT, sets=[*c.sets(), "train.stop=budget"])
        assert t.train.stop == "budget" and "train.stop=budget" in train, c.name
        # the stop is not in the model's key, so eval (without it) finds the model train wrote
        assert _recipe(CAT, sets=c.sets()).model_key() == t.model_key()
        assert train[train.index("--iterations") + 1] == score[score.index("--iterations") + 1] == "1234"


def test_an_unknown_candidate_names_the_known_ones():
    with pytest.raises(InputError, match="T20-z32"):
        bf.by_name(["blog", "T99"])
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "qd"), "bench", "frontier", str(CAT), "--candidate", "T99", "--time-only"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: no frontier candidate named T99; the candidates: " + ", ".join(c.name for c in bf.CANDIDATES)
    ]


def test_the_budget_buys_steps_in_proportion_to_measured_speed():
    assert bf.budget_steps(8, 2000.0, 400) == 2400
    assert bf.budget_steps(8, 1000.0, 400) == 1200
    assert bf.budget_steps(8, 1000.0, 200) == 2400  # same images, half the batch
    assert bf.budget_steps(0.001, 1.0, 400) == 1  # never zero steps


def test_timings_are_measured_in_alternating_rounds_once_then_cached(monkeypatch):
    speeds = {"blog": [900.0, 1000.0], "T20": [520.0, 480.0]}
    calls = []

    def fake_child(spec):
        name = "T20" if spec["model"]["T"] == 20 else "blog"
        calls.append(name)
        return {"images_per_s_median": speeds[name][(sum(1 for c in calls if c == name) - 1) % 2]}

    monkeypatch.setattr(P, "run_child", fake_child)
    monkeypatch.setattr(P, "machine_busy", lambda: False)
    base = _recipe(CAT)
    cands = bf.by_name(["blog", "T20"])
    got = bf.time_candidates(cands, base.model, base.train, "float32-streams", say=lambda m: None)
    assert calls == ["blog", "T20", "T20", "blog"]  # the second round runs in reverse order
    assert got["blog"]["images_per_s"] == 1000.0 and got["T20"]["images_per_s"] == 520.0  # best median each
    again = bf.time_candidates(cands, base.model, base.train, "float32-streams", say=lambda m: None)
    assert len(calls) == 4 and again == got  # cached: nothing measured again
    bf.time_candidates(cands, base.model, base.train, "float32-streams", say=lambda m: None, retime=True)
    assert len(calls) == 8


def test_the_table_ranks_by_frechet_over_floor():
    base = _recipe(CAT)

    def row(name, frechet):
        return {
            "name": name,
            "model": base.model.as_dict(),
            "batch_size": 400,
            "learning_rate": 2e-3,
            "images_per_s": 1000.0,
            "mflop_per_image": 52.0,
            "steps": 100,
            "eval": {"bound": 240.0, "recognized": 0.5, "frechet": frechet, "frechet_floor": 3.0},
        }

    text = bf.table({"candidates": [row("worse", 45.0), row("unscored", 0) | {"eval": None}, row("better", 15.0)]})
    lines = text.splitlines()
    assert lines[0].startswith("| candidate |") and set(lines[1]) == {"|", "-"}
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["better", "worse", "unscored"]
    assert "5.0x" in lines[2] and "15.0x" in lines[3]
