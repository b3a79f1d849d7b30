"""The step plan: candidates, the cache key, measuring once, the cache, falling back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qdcore.training import plan as P
from qdcore.config import ModelConfig, TrainConfig
from qdcore.errors import TrainingError

TINY = ModelConfig(height=10, width=13, T=2, enc_size=16, dec_size=16, z_size=4, read_n=3, write_n=3)
EPYC = {"model": "AMD EPYC", "machine": "x86_64", "flags": ["avx512_bf16", "avx512f", "fma"]}
F32_ONLY = {"model": "Some Xeon", "machine": "x86_64", "flags": ["avx2", "avx512f", "fma"]}
GPU = ["/physical_device:GPU:0 NVIDIA H100"]
LONG = TrainConfig(iterations=P.MEASURE_MIN_IMAGES // 400, batch_size=400)


def names(plans):
    return [p.name for p in plans]


class FakeMeasure:
    """Stands in for the subprocess timing: images/s by plan name, and a record of calls."""

    def __init__(self, rates):
        self.rates, self.calls = rates, []

    def __call__(self, plan, model_cfg, batch_size):
        self.calls.append((plan.name, model_cfg, batch_size))
        if self.rates.get(plan.name) is None:
            raise TrainingError(f"{plan.name} cannot run here")
        return {"images_per_s_median": self.rates[plan.name]}


def choose(train_cfg=LONG, model_cfg=TINY, info=EPYC, gpus=(), measure=None, say=None, busy=False):
    return P.choose(
        model_cfg,
        train_cfg,
        measure=measure,
        info=info,
        cores=2,
        gpus=list(gpus),
        tf_version="2.21.0",
        say=say or (lambda m: None),
        busy=busy,
    )


@pytest.fixture(autouse=True)
def _own_cache_no_env(monkeypatch, tmp_path):
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))  # each test starts unmeasured
    monkeypatch.delenv(P.NO_BF16_ENV, raising=False)
    monkeypatch.delenv(P.FORCE_ENV, raising=False)
    monkeypatch.setenv(P.MEASURE_ENV, "all")  # these tests time every candidate; the finalists' tests unset it


def test_a_fresh_machine_predicts_the_finalist_and_times_nothing_before_training(monkeypatch):
    """The plan the CPU's flags predict (every full measurement in docs/performance.md) is
    taken as it is: its trial is the training's own first steps, so nothing is written yet."""
    monkeypatch.delenv(P.MEASURE_ENV)
    rates = {"float32-xla": 100, "float32-xla-streams": 150, "float32-streams": 120, "bfloat16-streams": 300}
    small = TrainConfig(iterations=LONG.iterations * 20, batch_size=20)
    tiny = TrainConfig(iterations=LONG.iterations * 40, batch_size=12)  # too small for two streams
    for cfg, info, name in [
        (LONG, EPYC, "bfloat16-streams"),
        (LONG, F32_ONLY, "float32-streams"),
        (small, EPYC, "bfloat16-streams"),
        (small, F32_ONLY, "float32-streams"),
        (tiny, F32_ONLY, "float32-xla"),
    ]:
        fake = FakeMeasure(rates)
        c = choose(cfg, info=info, measure=fake, busy=True)
        assert (c.plan.name, c.how, c.rows, c.busy, fake.calls) == (name, "predicted", [], True, [])
        assert c.key["batch_size"] == cfg.batch_size and not c.path.exists()
    # With a GPU nothing here was ever measured: every candidate is timed, as before.
    gpu = FakeMeasure({"gpu-float32-xla": 900, "gpu-bfloat16-xla": 1000, "float32-xla": 100})
    assert choose(TrainConfig(iterations=LONG.iterations, batch_size=404), gpus=GPU, measure=gpu).how == "measured"
    assert len(gpu.calls) == len(P.candidates(404, 2, True, GPU))


def test_a_trial_caches_the_median_of_its_timed_calls_after_the_warm_up(monkeypatch):
    monkeypatch.delenv(P.MEASURE_ENV)
    c = choose(info=F32_ONLY, measure=FakeMeasure({}), busy=False)
    trial = P.Trial.of(c, 400)
    assert json.loads(c.path.read_text())["trial"]["pid"] == P.os.getpid() and P._read_cache(c.path, []) is None
    assert P._died_in_trial(c.path) is None  # this process: still trying
    # Two warm-up calls (trace, compile) are left out, then 4 + 4 + 4 steps: 0.2, 0.1, 0.3 s a step.
    assert [trial.observe(n, s) for n, s in [(1, 9.0), (1, 3.0), (4, 0.8), (4, 0.4)]] == [None] * 4
    measured = trial.observe(4, 1.2)
    assert measured.how == "measured" and measured.rows == [{"name": "float32-streams", "images_per_s": 2000.0}]
    record = json.loads(c.path.read_text())
    assert "trial" not in record and record["winner"] == "float32-streams" and record["key"] == c.key
    assert choose(info=F32_ONLY).how == "cached"
    # A plan that apply() had to change in this process is not the one predicted: no trial.
    assert P.Trial.of(P.replace(c, note="fell back"), 400) is None and P.Trial.of(measured, 400) is None
    # A run that ends before the trial has its steps (a resumed run's last few) ran the plan:
    # what it timed is cached, and with nothing timed its record goes (it did not die).
    c.path.unlink()
    early = P.Trial.of(c, 400)
    early.observe(1, 9.0), early.end()
    assert not c.path.exists()
    early = P.Trial.of(c, 400)
    [early.observe(n, s) for n, s in [(1, 9.0), (1, 3.0), (2, 0.5)]]
    early.end()
    assert P._read_cache(c.path, P.candidates(400, 2, False, []))[1] == [
        {"name": "float32-streams", "images_per_s": 1600.0}
    ]


def test_a_run_that_died_in_its_trial_makes_the_next_time_the_plans_in_a_child(monkeypatch):
    """A predicted plan that crashes its process (or a run killed before its steps were
    timed) does not take every later run down: the next one times the plans in a fresh
    process, the finalist first and the others when it cannot run."""
    import subprocess
    import sys

    monkeypatch.delenv(P.MEASURE_ENV)
    c = choose(measure=FakeMeasure({}))
    P.Trial.of(c, 400)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = json.loads(c.path.read_text())
    c.path.write_text(json.dumps({**record, "trial": {"pid": int(gone.stdout)}}))
    said = []
    broken = FakeMeasure({"float32-xla": 100, "float32-xla-streams": 150, "float32-streams": 120})
    again = choose(measure=broken, say=said.append)
    assert any("ended before its first steps were timed" in m for m in said)
    assert (again.how, again.plan.name, len(broken.calls)) == ("measured", "float32-xla-streams", 4)
    assert "trial" not in json.loads(c.path.read_text())


def test_finalist_mode_times_only_the_finalist_in_a_child(monkeypatch):
    """QD_PLAN_MEASURE=finalist: the predicted plan timed alone in a fresh process before
    training (the way before trials); the others only when it cannot run."""
    monkeypatch.setenv(P.MEASURE_ENV, "finalist")
    said = []
    rates = {"float32-xla": 100, "float32-xla-streams": 150, "float32-streams": 120, "bfloat16-streams": 300}
    bf16 = FakeMeasure(rates)
    c = choose(measure=bf16, say=said.append)
    assert [x[0] for x in bf16.calls] == ["bfloat16-streams"] and c.plan.name == "bfloat16-streams"
    assert any("measuring 1 of 4 step plans" in m for m in said) and c.rows == [
        {"name": "bfloat16-streams", "images_per_s": 300.0}
    ]
    f32 = FakeMeasure(rates)
    assert choose(info=F32_ONLY, measure=f32).plan.name == "float32-streams"
    assert [x[0] for x in f32.calls] == ["float32-streams"]
    small = TrainConfig(iterations=LONG.iterations * 40, batch_size=12)  # one stream
    one = FakeMeasure(rates)
    assert choose(small, measure=one).plan.name == "bfloat16-streams"  # one stream, bfloat16 units
    f32_small = FakeMeasure(rates)
    assert choose(small, info=F32_ONLY, measure=f32_small).plan.name == "float32-xla"
    assert [x[0] for x in one.calls + f32_small.calls] == ["bfloat16-streams", "float32-xla"]
    # The finalist cannot run here: the others are timed, and the best of them wins.
    broken = FakeMeasure({**rates, "bfloat16-streams": None})
    c = choose(TrainConfig(iterations=LONG.iterations, batch_size=402), measure=broken)
    assert c.plan.name == "float32-xla-streams" and len(broken.calls) == 4


def test_plans_sharing_thread_pools_are_timed_in_one_process(monkeypatch):
    specs = []

    def child(spec, command=P.TIMING_CHILD):
        specs.append(spec)
        if spec["plans"][0]["name"] == "float32-xla":
            raise TrainingError("no XLA here")
        return {
            "rows": [{"name": p["name"], "images_per_s_median": 10.0 * (i + 1)} for i, p in enumerate(spec["plans"])]
        }

    monkeypatch.setattr(P, "run_child", child)
    plans = P.candidates(400, 2, True, [])
    rows = P.time_plans(plans, TINY, 400, steps=3)
    assert [[p["name"] for p in s["plans"]] for s in specs] == [
        ["float32-xla"],
        ["float32-xla-streams", "float32-streams", "bfloat16-streams"],
    ]
    assert all(s["kind"] == "group" and s["iterations"] == 3 and s["batch_size"] == 400 for s in specs)
    assert isinstance(rows[0], TrainingError) and [r["images_per_s_median"] for r in rows[1:]] == [10.0, 20.0, 30.0]


def test_candidates_with_and_without_bfloat16():
    with_bf16 = P.candidates(400, 2, True, [])
    assert names(with_bf16) == ["float32-xla", "float32-xla-streams", "float32-streams", "bfloat16-streams"]
    bf16 = with_bf16[-1]
    assert (bf16.precision, bf16.jit_compile, bf16.streams, bf16.threads) == ("bfloat16", False, 2, (1, 2))
    assert with_bf16[0] == P.StepPlan("float32", True, name="float32-xla")  # TF's threads, one cluster
    without = P.candidates(400, 2, False, [])
    assert names(without) == ["float32-xla", "float32-xla-streams", "float32-streams"]
    assert {p.precision for p in without} == {"float32"}
    # A forced precision keeps only that arithmetic's plans.
    assert names(P.candidates(400, 2, True, [], "bfloat16")) == ["bfloat16-streams"]
    assert names(P.candidates(400, 2, True, [], "float32")) == names(without)


def test_streams_follow_cores_and_batch():
    assert {p.streams for p in P.candidates(400, 4, True, []) if p.threads} == {4}
    assert {p.streams for p in P.candidates(30, 16, True, [])} == {1, 3}  # at least MIN_STREAM images each
    assert {p.streams for p in P.candidates(20, 2, True, [])} == {1, 2}
    assert {p.streams for p in P.candidates(8, 2, True, [])} == {1}
    # One core: no thread pools to set and nothing to split, so one float32 plan is left.
    assert names(P.candidates(400, 1, True, [])) == ["float32-xla", "bfloat16-streams"]


def test_a_gpu_adds_the_gpu_plans_first():
    plans = P.candidates(400, 2, True, GPU)
    assert names(plans)[:2] == ["gpu-float32-xla", "gpu-bfloat16-xla"]
    assert all(p.device == "gpu" and p.jit_compile and p.threads is None for p in plans[:2])
    assert {p.device for p in plans[2:]} == {"cpu"}
    assert "gpu-" not in " ".join(names(P.candidates(400, 2, True, [])))


def test_bfloat16_flags_and_the_switch(monkeypatch):
    assert P.cpu_has_bf16(EPYC) and not P.cpu_has_bf16(F32_ONLY)
    assert P.cpu_has_bf16({"model": "x", "machine": "aarch64", "flags": ["fp", "asimd", "bf16"]})
    assert P.cpu_has_bf16({"model": "Apple M2", "machine": "arm64", "flags": []})  # unknown: measure it
    assert P.bf16_allowed(EPYC)
    monkeypatch.setenv(P.NO_BF16_ENV, "1")
    assert not P.bf16_allowed(EPYC)
    assert "bfloat16-streams" not in names(P.candidates(400, 2, P.bf16_allowed(EPYC), []))
    # ...but a recipe that asks for bfloat16 still gets it.
    assert choose(TrainConfig(precision="bfloat16")).plan.name == "bfloat16-streams"


def test_cpu_info_reads_this_machine():
    info = P.cpu_info()
    assert set(info) == {"model", "flags", "machine"} and info["machine"]
    assert info["flags"] == sorted(info["flags"])
    assert P.cpu_count() >= 1


def test_key_fields_hold_what_decides_the_plan():
    plans = P.candidates(400, 2, True, GPU)
    fields = P.key_fields(TINY, 400, plans, EPYC, 2, "2.21.0", GPU)
    assert fields["cpu"] == "AMD EPYC" and fields["flags"] == EPYC["flags"] and fields["cores"] == 2
    assert fields["tensorflow"] == "2.21.0" and fields["model"] == TINY.as_dict() and fields["batch_size"] == 400
    assert fields["devices"] == GPU and fields["candidates"] == names(plans)
    path = P.cache_path(fields)
    assert path.parent.name == "plans" and path.suffix == ".json"
    assert P.cache_path(dict(fields)) == path  # a pure function of the fields
    for change in (
        {"batch_size": 800},
        {"model": ModelConfig().as_dict()},
        {"cores": 4},
        {"tensorflow": "2.22.0"},
        {"devices": []},
        {"cpu": "Intel Xeon"},
        {"flags": ["avx2"]},
    ):
        assert P.cache_path({**fields, **change}) != path, change


def test_auto_measures_once_then_reuses_the_cache():
    said = []
    fake = FakeMeasure(
        {"float32-xla": 100, "float32-xla-streams": 150, "float32-streams": 120, "bfloat16-streams": 300}
    )
    first = choose(measure=fake, say=said.append)
    assert first.how == "measured" and first.plan.name == "bfloat16-streams"
    assert [c[0] for c in fake.calls] == ["float32-xla", "float32-xla-streams", "float32-streams", "bfloat16-streams"]
    assert all(c[1] == TINY and c[2] == 400 for c in fake.calls)  # timed at this run's shape and batch
    assert sum("measuring 4 step plans" in m and "once" in m for m in said) == 1
    assert first.path.exists()
    saved = json.loads(first.path.read_text())
    assert saved["winner"] == "bfloat16-streams" and len(saved["rows"]) == 4
    assert not list(first.path.parent.glob(".*part*"))  # written atomically, nothing left over

    again = FakeMeasure({})
    second = choose(measure=again, say=said.append)
    assert again.calls == [] and second.how == "cached" and second.plan == first.plan
    assert "cached" in second.label() and "bfloat16-streams" in second.label()


def test_a_busy_machines_choice_is_measured_again_once_it_is_quiet():
    rates = {"float32-xla": 100, "float32-xla-streams": 150, "float32-streams": 120, "bfloat16-streams": 90}
    said = []
    first = choose(measure=FakeMeasure(rates), say=said.append, busy=True)
    assert first.how == "measured" and json.loads(first.path.read_text())["busy"] is True
    assert any("busy" in m and "measures again" in m for m in said)
    # Still busy, or a short run: the busy machine's choice serves.
    assert choose(measure=FakeMeasure({}), busy=True).how == "cached"
    assert choose(TrainConfig(iterations=10), measure=FakeMeasure({})).how == "cached"
    # Quiet now: measured again (this time bfloat16 wins), and cached as a quiet measurement.
    said, again = [], FakeMeasure({**rates, "bfloat16-streams": 400})
    quiet = choose(measure=again, say=said.append)
    assert quiet.how == "measured" and quiet.plan.name == "bfloat16-streams" and len(again.calls) == 4
    assert any("measured on a busy machine" in m for m in said)
    assert json.loads(quiet.path.read_text())["busy"] is False
    assert choose(measure=FakeMeasure({})).how == "cached"


def test_busy_share_sees_other_processes_on_every_core():
    import subprocess
    import sys

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(P.cpu_count())]
    try:
        import time

        time.sleep(0.3)  # let them start
        share = P.busy_share(0.5)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert share is not None and share > 0.6


def test_a_run_that_starts_while_another_measures_waits_and_takes_its_winner():
    import threading
    import time

    from qdcore.training import locks

    rates = {"float32-xla": 100, "float32-xla-streams": 150, "float32-streams": 120, "bfloat16-streams": 90}
    path = choose(measure=FakeMeasure(rates)).path
    winner = path.read_text()
    path.unlink()
    held, said = threading.Event(), []

    def other_process():  # holds the measuring lock, then writes its winner
        with locks.hold(path.with_suffix(".lock"), "measuring"):
            held.set()
            time.sleep(0.5)
            path.write_text(winner)

    t = threading.Thread(target=other_process)
    t.start()
    held.wait()
    never = FakeMeasure({})
    c = choose(measure=never, say=said.append)
    t.join()
    assert c.how == "cached" and c.plan.name == "float32-xla-streams" and never.calls == []
    assert any("waiting for another qd process" in m for m in said)


def test_a_new_batch_or_shape_is_measured_anew():
    fake = FakeMeasure({"float32-xla": 100, "float32-xla-streams": 150, "float32-streams": 120, "bfloat16-streams": 90})
    a = choose(measure=fake)
    b = choose(TrainConfig(iterations=LONG.iterations, batch_size=800), measure=fake)
    c = choose(model_cfg=ModelConfig(**{**TINY.as_dict(), "T": 3}), measure=fake)
    assert len({a.path, b.path, c.path}) == 3 and a.how == b.how == c.how == "measured"
    assert len(fake.calls) == 12 and a.plan.name == "float32-xla-streams"
    assert {c[2] for c in fake.calls} == {400, 800}


def test_a_corrupt_cache_file_is_measured_again(tmp_path):
    fake = FakeMeasure({"float32-xla": 100, "float32-xla-streams": 150, "float32-streams": 120, "bfloat16-streams": 90})
    path = choose(measure=fake).path
    for junk in ("{not json", "[]", json.dumps({"winner": "no-such-plan", "plan": {}, "rows": []}), ""):
        path.write_text(junk)
        said, again = [], FakeMeasure(fake.rates)
        c = choose(measure=again, say=said.append)
        assert c.how == "measured" and c.plan.name == "float32-xla-streams" and len(again.calls) == 4
        assert any("unreadable" in m for m in said)
        assert json.loads(path.read_text())["winner"] == "float32-xla-streams"


def test_a_plan_that_fails_to_run_loses():
    said = []
    c = choose(
        measure=FakeMeasure(
            {"float32-xla": 100, "float32-xla-streams": None, "float32-streams": 120, "bfloat16-streams": None}
        ),
        say=said.append,
    )
    assert c.plan.name == "float32-streams" and [r["name"] for r in c.rows] == ["float32-xla", "float32-streams"]
    assert sum("failed to run" in m for m in said) == 2
    with pytest.raises(TrainingError, match="no step plan could run"):
        choose(TrainConfig(iterations=LONG.iterations, batch_size=401), measure=FakeMeasure({}))


def test_short_runs_forced_plans_and_single_candidates_measure_nothing(monkeypatch):
    never = FakeMeasure({})
    short = choose(TrainConfig(iterations=P.MEASURE_MIN_IMAGES // 400 - 1), measure=never)
    # Nothing compiled for a short run: XLA's compile costs more than it saves there.
    assert short.how == "unmeasured" and short.plan == P.StepPlan("float32", False, name="float32")
    # Short in images, not steps: a fine-tune's 1,000 steps of 23 are not measured, and at a
    # batch too small for streams its step is compiled (per-op overhead is most of a step there).
    small = choose(TrainConfig(iterations=1000, batch_size=23), measure=never)
    assert small.how == "unmeasured" and small.plan == P.StepPlan("float32", True, name="float32-xla")
    few = choose(TrainConfig(iterations=P.SHORT_XLA_MIN_STEPS - 1, batch_size=23), measure=never)
    assert few.plan == P.StepPlan("float32", False, name="float32")
    long_small = choose(TrainConfig(iterations=10_000, batch_size=23), measure=FakeMeasure({"float32-xla": 1}))
    assert long_small.how == "measured"
    gpu_short = choose(TrainConfig(iterations=10), measure=never, gpus=["/physical_device:GPU:0"])
    assert gpu_short.how == "unmeasured" and gpu_short.plan.name == "gpu-float32-xla"
    assert choose(TrainConfig(iterations=10_000, precision="bfloat16"), measure=never).how == "only"
    assert (
        choose(
            info=F32_ONLY, measure=FakeMeasure({"float32-xla": 1, "float32-xla-streams": 2, "float32-streams": 3})
        ).plan.name
        == "float32-streams"
    )
    monkeypatch.setenv(P.FORCE_ENV, "float32-streams")
    forced = choose(measure=never)
    assert forced.how == "forced" and forced.plan.name == "float32-streams"
    monkeypatch.setenv(P.FORCE_ENV, "warp-drive")
    with pytest.raises(TrainingError, match="Available names: float32-xla, "):
        choose(measure=never)
    assert never.calls == []


def test_gpu_plans_are_measured_like_the_others():
    fake = FakeMeasure(
        {
            "gpu-float32-xla": 900,
            "gpu-bfloat16-xla": 1200,
            "float32-xla": 100,
            "float32-xla-streams": 150,
            "float32-streams": 120,
            "bfloat16-streams": 300,
        }
    )
    c = choose(gpus=GPU, measure=fake)
    assert c.plan.name == "gpu-bfloat16-xla" and c.plan.device == "gpu" and len(fake.calls) == 6
    assert choose(measure=fake).path != c.path  # the devices are part of the key


def test_threads_that_can_no_longer_be_set_fall_back_and_say_so():
    tf = pytest.importorskip("tensorflow")
    tf.constant(1.0) + 1.0  # TensorFlow has started in this process: its pools are fixed
    now = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    odd = (now[0] + 3, now[1] + 5)
    f32 = P.apply(P.Choice(P.StepPlan("float32", False, 2, odd, name="float32-streams"), "cached"))
    assert f32.plan.name == "float32-xla" and f32.plan.threads is None
    assert "float32-streams" in f32.note and "already started" in f32.note
    bf16 = P.apply(P.Choice(P.StepPlan("bfloat16", False, 2, odd, name="bfloat16-streams"), "cached"))
    assert bf16.plan == P.StepPlan("bfloat16", False, name="bfloat16") and "bfloat16-streams" in bf16.note
    plain = P.Choice(P.StepPlan("float32", True, name="float32-xla"), "measured")
    assert P.apply(plain) is plain  # nothing to set, nothing to say
    same = P.Choice(P.StepPlan("float32", False, 2, now, name="float32-streams"), "cached")
    assert P.apply(same).plan == same.plan and not P.apply(same).note  # the pools already match


def test_time_plan_runs_the_step_in_a_fresh_process():
    row = P.time_plan(P.StepPlan("float32", False, 2, (1, 2), name="float32-streams"), TINY, 8, steps=2)
    assert row["plan"] == "float32-streams" and row["images_per_s"] > 0 and row["batch_size"] == 8
    assert row["threads"] == [1, 2] and row["streams"] == 2


def test_train_measures_once_and_names_the_plan(tmp_path, monkeypatch, capsys):
    """train() with auto: the first run measures (faked here) and the second reuses it."""
    from qdcore.interfaces import ImageSet
    from qdcore.training.train import train
    from qdcore.reporter import Reporter

    tf = pytest.importorskip("tensorflow")
    tf.constant(1.0) + 1.0  # started: the winner's 1+2 threads can no longer be set here
    fake = FakeMeasure({"float32-xla": 100, "float32-xla-streams": 50, "float32-streams": 10, "bfloat16-streams": 200})
    monkeypatch.setattr(P, "time_plans", lambda plans, model_cfg, batch: [fake(p, model_cfg, batch) for p in plans])
    monkeypatch.setattr(P, "MEASURE_MIN_IMAGES", 24)
    monkeypatch.setattr(P, "cpu_count", lambda: 2)  # the same four candidates on any machine,
    monkeypatch.setattr(P, "bf16_allowed", lambda info=None: True)  # bfloat16 units or not (Zen 3 has none)
    # A quiet machine, whatever else runs: the busy rule (its own tests above) would re-measure
    # when the first run's look at /proc/stat finds the cores busy and the second's does not.
    monkeypatch.setattr(P, "machine_busy", lambda: False)
    rng = np.random.default_rng(0)
    data = ImageSet((rng.random((40, 10, 13)) > 0.7).astype(np.uint8) * 255, "synthetic")
    cfg = TrainConfig(iterations=6, batch_size=4, checkpoint_every=10_000, warmup=0)
    for run in ("a", "b"):
        trained = train(TINY, cfg, data, tmp_path / run, reporter=Reporter.to_stderr())
        assert trained.step == cfg.iterations
    err = capsys.readouterr().err
    assert len(fake.calls) == 4 and err.count("measuring 4 step plans") == 1
    # The fallback keeps the measured arithmetic, in one stream on TensorFlow's threads.
    assert err.count("step plan bfloat16-streams needs 1+2 threads, but TensorFlow already started") == 2
    assert "training synthetic (bfloat16, measured)" in err and "training synthetic (bfloat16, cached)" in err


def test_time_plans_times_plans_sharing_pools_in_one_fresh_process():
    """The finalists of a streams batch in one child: each its own model, the pools set once;
    a batch this small runs several steps a call, as training does (train.steps_per_call)."""
    plans = [
        P.StepPlan("float32", False, 2, (1, 2), name="float32-streams"),
        P.StepPlan("bfloat16", False, 2, (1, 2), name="bfloat16-streams"),
    ]
    rows = P.time_plans(plans, TINY, 8, steps=2)
    assert [r["plan"] for r in rows] == ["float32-streams", "bfloat16-streams"]
    assert all(r["images_per_s"] > 0 and r["threads"] == [1, 2] and r["batch_size"] == 8 for r in rows)
    small = P.time_plans([P.StepPlan("float32", True, name="float32-xla")], TINY, 8, steps=2)[0]
    assert small["steps_per_call"] > 1 and small["steps"] == small["steps_per_call"]


def test_train_times_a_predicted_plan_in_its_own_first_steps(tmp_path, monkeypatch, capsys):
    """A fresh machine's first long run: no timing child, the predicted plan's speed from the
    run's own steps, cached; the next run takes it from the cache."""
    from qdcore.interfaces import ImageSet
    from qdcore.reporter import Reporter
    from qdcore.training.train import train

    monkeypatch.delenv(P.MEASURE_ENV)
    monkeypatch.setattr(P, "time_plans", lambda *a, **k: pytest.fail("a plan was timed in a child"))
    monkeypatch.setattr(P, "MEASURE_MIN_IMAGES", 24)
    monkeypatch.setattr(P, "cpu_count", lambda: 2)
    monkeypatch.setattr(P, "bf16_allowed", lambda info=None: False)  # float32-only: float32-xla at batch 4
    monkeypatch.setattr(P, "machine_busy", lambda: False)
    rng = np.random.default_rng(0)
    data = ImageSet((rng.random((40, 10, 13)) > 0.7).astype(np.uint8) * 255, "synthetic")
    cfg = TrainConfig(iterations=30, batch_size=4, checkpoint_every=5, warmup=0, precision="auto")
    for run in ("a", "b"):
        assert train(TINY, cfg, data, tmp_path / run, reporter=Reporter.to_stderr()).step == cfg.iterations
    err = capsys.readouterr().err
    assert "plan: float32-xla, predicted" in err and "plan: float32-xla, cached" in err, err
    assert err.count("step plan float32-xla: ") == 1 and "img/s in this run's first steps" in err
    (path,) = (P.cache_dir() / "plans").glob("*.json")
    record = json.loads(path.read_text())
    assert "trial" not in record and record["winner"] == "float32-xla" and record["rows"][0]["images_per_s"] > 0
    # The studio's cancel in the trial's warm-up is a normal end: no record of a run that died.
    from qdcore.errors import Cancelled

    path.unlink()
    with pytest.raises(Cancelled):
        train(TINY, cfg, data, tmp_path / "c", on_step=lambda *a: True)
    assert not path.exists() and P._died_in_trial(path) is None
