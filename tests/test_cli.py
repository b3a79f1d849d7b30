"""The `qd` command as a user meets it: hostile recipes each give one `Error:` line, the
documented exit code, no traceback and no output file; fast commands never import TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_distribution

QD = str(Path(sys.executable).parent / "qd")
BUILTINS = "datasets,seeds,filters,writers,recognizers,generators"
OK = "dataset: {use: quickdraw, category: apple, limit: 50}\n"


def qd(*args, env=None, cwd=None, timeout=300):
    # The timeout only turns a hang into a failure; it is generous because a busy machine
    # (trainings beside the suite) makes a TensorFlow start alone take a minute.
    full_env = {**os.environ, "QD_LOAD_PLUGINS": BUILTINS, **(env or {})}
    return subprocess.run([QD, *map(str, args)], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


HOSTILE = {
    "empty file": ("", 2, "the recipe is empty"),
    "bad yaml": ("dataset: {use: quickdraw, category: apple\n", 2, "invalid YAML"),
    "top level is a list": ("- dataset\n- model\n", 2, "a recipe is a mapping"),
    "python tag refused by safe loading": ("!!python/object/apply:os.system ['touch pwned']\n", 2, "invalid YAML"),
    "unknown section": (OK + "filter: [sharpen]\n", 2, "unknown section 'filter'"),
    "no dataset": ("name: x\n", 2, "missing section `dataset:`"),
    "dataset without use": ("dataset: {category: apple}\n", 2, "missing `use:`"),
    "unknown dataset": ("dataset: {use: quickdraws, category: apple}\n", 2, "Did you mean 'quickdraw'"),
    "unknown filter": (
        OK + "filters: [sharpn]\n",
        2,
        "filters[0].use: Can't find filter 'sharpn'. Did you mean 'sharpen'",
    ),
    "unknown seed strategy": (OK + "seeds: [{use: sobel-edge}]\n", 2, "Did you mean 'sobel-edges'"),
    "unknown writer": (OK + "output: {use: giff}\n", 2, "Can't find writer 'giff'"),
    "unknown key": (OK + "filters: [{use: sharpen, amount: 2}]\n", 2, "filters[0].amount: unknown key 'amount'"),
    "wrong type": (OK + "generate: {n: many}\n", 2, "generate.n: 'many' is not an integer"),
    "zero steps": (OK + "model: {T: 0}\n", 2, "model.T: 0 is out of range"),
    "learning rate out of range": (OK + "train: {learning_rate: 5}\n", 2, "train.learning_rate: 5.0 is out of range"),
    "not a boolean": (OK + "model: {attention: sure}\n", 2, "model.attention: 'sure' is not a boolean"),
    "bad choice": (OK + "output: {use: gif, frames: sideways}\n", 2, "output.frames: 'sideways' is not allowed"),
    "missing required key": (OK + "seeds: [{use: file-image}]\n", 2, "missing required key 'path'"),
    "seed image missing": (OK + "seeds: [{use: file-image, path: nowhere.png}]\n", 2, "nowhere.png"),
    "perturbation first": (OK + "seeds: [{use: sobel-edges}]\n", 2, "needs a source before it"),
    "two sources": (OK + "seeds: [prior, training-batch]\n", 2, "only the first seed step may be a source"),
    "seeds not a list": (OK + "seeds: prior\n", 2, "must be a list of steps"),
    "unknown category": ("dataset: {use: quickdraw, category: windmil}\n", 2, "windmill"),
    "unknown stroke category": ("dataset: {use: quickdraw-strokes, category: coffe cup}\n", 2, "coffee cup"),
    "filter parameter out of range": (OK + "filters: [{use: upscale, size: 0}]\n", 2, "filters[0].size"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_recipe(case, tmp_path):
    text, code, fragment = HOSTILE[case]
    recipe = tmp_path / "hostile.yaml"
    recipe.write_text(text)
    out = tmp_path / "out" / "x.gif"
    r = qd("run", recipe, "--out", out, "--iterations", 1, cwd=tmp_path)
    assert_one_error(r, code, fragment)
    assert not out.exists() and not out.parent.exists()
    assert not (tmp_path / "pwned").exists()


def assert_one_error(r, code, fragment):
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert r.returncode == code, r.stderr
    assert len(errors) == 1, r.stderr
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_missing_recipe_file_and_folder(tmp_path):
    assert_one_error(qd("run", tmp_path / "nope.yaml"), 2, "recipe file not found")
    assert_one_error(qd("run", tmp_path), 2, "is a folder, not a recipe file")


def test_unreadable_binary_recipe(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage\x89PNG")
    assert_one_error(qd("validate", p), 2, "bin.yaml")


def test_negative_iterations_flag(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(OK)
    assert_one_error(qd("run", p, "--iterations", -5), 2, "--iterations: -5 is out of range")


def test_output_under_a_file_is_refused_before_work(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(OK)
    (tmp_path / "afile").write_text("x")
    assert_one_error(qd("run", p, "--out", tmp_path / "afile" / "x.gif"), 2, "is a file, not a folder")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"not a numpy file at all", "apple.npy"),
        (None, "apple.npy"),  # a valid .npy of the wrong shape
    ],
)
def test_bad_local_data_file_fails_before_training(tmp_path, content, fragment):
    data = tmp_path / "data" / "numpy_bitmap"
    data.mkdir(parents=True)
    if content is None:
        np.save(data / "apple.npy", np.zeros((5, 100), np.uint8))
    else:
        (data / "apple.npy").write_bytes(content)
    p = tmp_path / "r.yaml"
    p.write_text(OK)
    out = tmp_path / "out.gif"
    r = qd(
        "run", p, "--out", out, env={"QD_DATA_DIR": str(tmp_path / "data"), "QD_DOWNLOAD_URL": "http://127.0.0.1:9/"}
    )
    assert_one_error(r, 2, fragment)
    assert not out.exists()


def test_plugin_that_raises_at_import(tmp_path):
    site = write_distribution(
        tmp_path / "site",
        "qd-broken",
        {"qdtest_broken": "raise ImportError('no such lib')\n"},
        {"broken": "qdtest_broken"},
    )
    p = tmp_path / "r.yaml"
    p.write_text(OK + "seeds: [{use: spiral}]\n")
    env = {"PYTHONPATH": str(site), "QD_LOAD_PLUGINS": BUILTINS + ",broken"}
    r = qd("run", p, "--out", tmp_path / "x.gif", env=env)
    assert_one_error(r, 2, "Can't find seed strategy 'spiral'")
    assert "Plugins that failed to load: broken" in r.stderr
    assert "Warning: qd plugin 'broken' failed to load" in r.stderr
    listed = json.loads(qd("plugins", "--json", env=env).stdout)
    broken = [p for p in listed if p["name"] == "broken"][0]
    assert "no such lib" in broken["error"]
    assert {p["name"] for p in listed} == set(BUILTINS.split(",")) | {"broken"}


def test_debug_shows_the_traceback(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("dataset: {use: quickdraws, category: apple}\n")
    r = qd("run", p, "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "UnknownNameError" in r.stderr


def test_usage_errors_exit_2():
    assert_one_error(qd("frobnicate"), 2, "No such command")
    assert_one_error(qd("run"), 2, "Missing argument")


def test_version():
    r = qd("--version")
    assert r.returncode == 0 and r.stdout.startswith("qd 0.")


def test_plugins_json_lists_the_builtins():
    r = qd("plugins", "--json")
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert set(rows) == {"datasets", "seeds", "filters", "writers", "recognizers", "generators"}
    assert rows["generators"]["provides"]["generators"] == ["complete", "morph"]
    provides = {k: v for row in rows.values() for k, v in row["provides"].items() if v}
    assert {"quickdraw", "quickdraw-strokes", "images"} <= set(provides["datasets"])
    assert {"training-batch", "file-image", "sobel-edges", "random-pixels", "prior"} <= set(provides["seed_strategies"])
    assert {"sharpen", "edge-enhance", "anti-alias", "upscale", "invert"} <= set(provides["filters"])
    assert {"gif", "png-sheet"} <= set(provides["writers"])
    assert provides["recognizers"] == ["cnn"] and rows["recognizers"]["hooks"] == ["qd_register_recognizers"]
    assert rows["seeds"]["hooks"] == ["qd_register_seed_strategies"]
    assert all(row["version"] for row in rows.values())
    table = qd("plugins").stdout
    assert "sobel-edges" in table and "datasets" in table


@pytest.mark.parametrize("argv", [["plugins", "--json"], ["validate", "recipes/apple.yaml"], ["models", "--json"]])
def test_fast_commands_never_import_tensorflow(argv):
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\nfrom qdcore.cli import main\ntry:\n    main(%r)\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n" % argv
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "QD_LOAD_PLUGINS": BUILTINS},
    )
    assert r.returncode == 0, r.stderr


def test_train_sample_eval_commands(tmp_path, quickdraw_dir, monkeypatch):
    """train and the first eval (which trains the recognizer) as a user runs them, in their own
    processes; the later commands in this one (typer's CliRunner), sparing a TensorFlow start
    each."""
    from typer.testing import CliRunner

    from qdcore.cli import app

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("""
name: tiny
dataset: {use: quickdraw, category: cat, limit: 300}
model: {T: 3, enc_size: 16, dec_size: 16, z_size: 4}
train: {iterations: 4, batch_size: 32, checkpoint_every: 2}
filters: [{use: upscale, size: 40}]
recognizer: {use: cnn, categories: [cat, apple, rainbow], per_class: 200, epochs: 1, width: 4, features: 16}
""")
    # Both kinds of command read these: qd() passes this process's environment on.
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("QD_DATA_DIR", str(quickdraw_dir))
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)

    def here(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    r = qd("train", recipe, "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("model at step 4: ")
    r = here("sample", recipe, "--n", 6, "--out", tmp_path / "s.png", "--quiet")
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size == (3 * 40 + 2 * 2, 2 * 40 + 2)  # 6 samples on a 3x2 grid
    r = qd("eval", recipe, "--quiet", timeout=900)  # trains the tiny recognizer
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert figures["step"] == 4 and figures["targets"] == "greyscale"
    assert figures["bound"] == pytest.approx(figures["lx"] + figures["lz"], rel=1e-4) and figures["lz"] > 0
    assert figures["n_images"] == 30  # the 10% held out of 300
    # How close its reconstructions are: of the 270 training and the 30 held-out cats, and of all 300.
    rec = figures["reconstruction_error"]
    assert 0 < rec["train"] < 1 and 0 < rec["held_out"] < 1
    assert rec["all"] == pytest.approx((270 * rec["train"] + 30 * rec["held_out"]) / 300, abs=2e-4)
    # The recognizer's figures: 500 prior samples of cat, upscaled by the recipe and scaled back.
    assert figures["recognizer"] == "cnn" and figures["category"] == "cat" and figures["n"] == 500
    assert 0 <= figures["recognized"] <= 1 and 0 < figures["recognized_real"] <= 1
    assert figures["frechet"] > figures["frechet_floor"] > 0 and figures["best_of"] == 1
    assert figures["real_held_out"] == 1000  # cat.npy has enough drawings the recognizer never saw
    assert list((tmp_path / "cache" / "recognizers").iterdir())  # trained once, cached
    r = here("eval", recipe, "--quiet", "--n", 20, "--best-of", 2)
    assert r.exit_code == 0, r.output
    picky = json.loads(r.stdout)
    assert picky["n"] == 20 and picky["best_of"] == 2 and picky["bound"] == figures["bound"]
    # --reconstruct: the same figures for reconstructions of held-out cats, beside the prior's.
    r = here("eval", recipe, "--quiet", "--n", 20, "--reconstruct")
    assert r.exit_code == 0, r.output
    both = json.loads(r.stdout)
    rebuilt = both["reconstructions"]
    assert both["n"] == 20 and rebuilt["n"] == rebuilt["held_out_reconstructed"] == 20 and rebuilt["category"] == "cat"
    assert 0 <= rebuilt["recognized"] <= 1 and rebuilt["frechet"] > 0 and rebuilt["frechet_floor"] > 0
    r = here("eval", recipe, "--quiet", "--n", 50, "--reconstruct")  # only 30 cats were held out
    assert json.loads(r.stdout)["reconstructions"]["held_out_reconstructed"] == 30
    # --real: the recipe's filters judged on real drawings, raw beside filtered (the same real
    # sets as above: raw sits at the floor). Nearest upscaling changes nothing once scaled back.
    r = here("eval", recipe, "--quiet", "--real", "--n", 100)
    assert r.exit_code == 0, r.output
    real = json.loads(r.stdout)
    assert real["category"] == "cat" and real["n"] == 100 and "bound" not in real
    assert real["raw"]["frechet"] == real["frechet_floor"] > 0 and real["raw"]["frechet_over_floor"] == 1.0
    assert real["filtered"] == pytest.approx(real["raw"])
    r = here("eval", recipe, "--quiet", "--real", "--n", 100, "-s", "filters[0]={use: ink, size: 84, width: 3}")
    assert r.exit_code == 0, r.output
    pen = json.loads(r.stdout)
    assert pen["raw"] == real["raw"] and pen["filtered"]["ink"] < 0.7 * pen["raw"]["ink"]
    assert pen["filtered"]["frechet"] > pen["frechet_floor"]
    two = tmp_path / "two.yaml"
    two.write_text(recipe.read_text().replace("category: cat", "category: [cat, apple]"))
    r = qd("eval", two, "--quiet", "--real")
    last = r.stderr.strip().splitlines()[-1]
    assert (
        r.returncode == 2
        and last.startswith("Error: --real needs the recognizer figures")
        and "names 2 categories" in last
    )
    r = qd("eval", two, "--quiet", "--reconstruct")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("Error: --reconstruct needs the recognizer")


def test_bench_quality_prints_one_json_line_and_writes_the_sheet(tmp_path, quickdraw_dir):
    recipe = tmp_path / "q.yaml"
    recipe.write_text("""
dataset: {use: quickdraw, category: cat, limit: 200}
model: {T: 2, enc_size: 8, dec_size: 8, z_size: 2}
train: {batch_size: 16}
generate: {n: 4}
filters: [{use: upscale, size: 32}]
""")
    sheet = tmp_path / "sheet.png"
    # The recipe's 10,000 iterations would have auto measure the step plans first (a minute
    # or more); what is tested here is the quality bench, so the plan is named.
    r = qd(
        "bench",
        "quality",
        recipe,
        "--minutes",
        0.02,
        "--sheet",
        sheet,
        env={"QD_DATA_DIR": str(quickdraw_dir), "QD_STEP_PLAN": "float32-xla"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert [m["minutes"] for m in figures["marks"]] == [0.02]
    assert figures["marks"][0]["step"] > 0 and figures["n_held_out"] == 20
    assert figures["sheet"] == str(sheet)
    from PIL import Image

    assert Image.open(sheet).size == (2 * 32 + 2, 2 * 32 + 2)  # 4 samples, upscaled, 2x2 grid


def _fake_child(specs: list, rates: dict, references: list):
    """plan.run_child as the bench calls it, without the ~20 s per child of starting
    TensorFlow and timing the blog's model: the row the child would print (timing.timed's
    fields, the plan's threads, run_qd's plan fields), at the rate given for its plan."""
    from qdcore.config import ModelConfig
    from qdcore.training.timing import timed

    def child(spec, command=None):
        specs.append(spec)
        qd_side = spec["kind"] == "qd"
        rate = rates[spec["plan"]["name"]] if qd_side else references.pop(0)
        batch = spec.get("batch_size", 100)
        row = timed(lambda: None, spec["iterations"], batch, ModelConfig(**spec.get("model", {})), "fake")
        row.update(images_per_s=rate, images_per_s_median=rate, steps_per_s=rate / batch)
        row["threads"] = list(spec["plan"]["threads"] or [0, 0]) if qd_side else [0, 0]
        if qd_side:
            p = spec["plan"]
            row.update(plan=p["name"], precision=p["precision"], xla=p["jit_compile"], streams=p["streams"])
        return row

    return child


def test_bench_train_prints_every_plan_and_auto_choice(tmp_path, monkeypatch):
    """Every candidate (here with the bfloat16 ones left out, as on a float32-only CPU), its
    ratio to the reference timed before and after them, and auto's choice, which is cached
    for training. The children are faked, so the figures are known (the next test runs the
    reference's child for real; tests/test_plan.py runs qd's)."""
    from typer.testing import CliRunner

    from qdcore.cli import app
    from qdcore.config import ModelConfig
    from qdcore.training import plan as P
    from qdcore.training.timing import gflop_per_step

    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "machine_busy", lambda: False)
    rates = {"float32-xla": 900.0, "float32-xla-streams": 1300.0, "float32-streams": 1100.0}
    specs, references = [], [500.0, 700.0]  # the reference before the plans, and after them
    monkeypatch.setattr(P, "run_child", _fake_child(specs, rates, references))
    r = CliRunner().invoke(app, ["bench", "train", "--iterations", "3", "--batch-size", "8", "--no-bf16", "--quiet"])
    assert r.exit_code == 0, r.output
    figures = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert figures["numpy_matmul_peak_gflop_per_s"] > 0
    ref, default, rows = figures["reference"], figures["default"], figures["candidates"]
    assert [s["kind"] for s in specs] == ["reference", *["qd"] * len(rows), "reference"]
    assert all(s["iterations"] == 3 for s in specs) and all(s["batch_size"] == 8 for s in specs[1:-1])
    assert ref["batch_size"] == 100 and default["batch_size"] == 8
    assert ref["images_per_s_median"] == 600.0 and ref["images_per_s_median_each_run"] == [500.0, 700.0]
    names = [row["plan"] for row in rows]
    assert names[0] == "float32-xla" and set(names) <= set(rates) and len(names) >= 2
    assert all(row["precision"] == "float32" for row in rows)
    for side in (ref, *rows):
        for key in ("steps_per_s", "images_per_s", "images_per_s_median", "gflop_per_step", "achieved_gflop_per_s"):
            assert side[key] > 0, (key, side)
    assert ref["threads"] == [0, 0]  # the reference runs at TensorFlow's defaults
    for row in rows:  # each plan's process is asked for its own threads; ratios against the references' mean
        assert row["threads"] == ([0, 0] if row["plan"] == "float32-xla" else [1, P.cpu_count()])
        assert row["ratio_to_reference"] == round(rates[row["plan"]] / 600.0, 2)
    fastest = max(rows, key=lambda row: row["images_per_s_median"])["plan"]
    assert figures["auto"] == default["plan"] == fastest
    assert figures["images_per_s_ratio_default_over_reference"] == default["ratio_to_reference"]
    cached = json.loads(Path(figures["plan_cache"]).read_text())
    assert Path(figures["plan_cache"]).parent == tmp_path / "cache" / "plans" and cached["winner"] == figures["auto"]
    assert [row["name"] for row in cached["rows"]] == names
    # each row's share of numpy's peak: the step's matmul GFLOP at its median speed
    for row in rows:
        gflop = gflop_per_step(ModelConfig(), 8) * row["images_per_s_median"] / 8
        assert row["peak_share"] == pytest.approx(gflop / figures["numpy_matmul_peak_gflop_per_s"], abs=2e-3)
    assert "small_batch" not in figures  # --batch-size: that batch alone

    # Without --batch-size: batch 400 and batch 20, one reference around both, each cached.
    specs.clear()
    references.extend([500.0, 700.0])
    r = CliRunner().invoke(app, ["bench", "train", "--iterations", "3", "--no-bf16", "--quiet"])
    assert r.exit_code == 0, r.output
    two = json.loads(r.stdout)
    small = two["small_batch"]
    assert [s["kind"] for s in specs] == [
        "reference",
        *["qd"] * (len(two["candidates"]) + len(small["candidates"])),
        "reference",
    ]
    assert two["default"]["batch_size"] == 400 and small["batch_size"] == small["default"]["batch_size"] == 20
    assert small["images_per_s_ratio_to_default_batch"] == round(
        small["default"]["images_per_s_median"] / two["default"]["images_per_s_median"], 2
    )
    assert small["plan_cache"] != two["plan_cache"]

    both = qd("bench", "train", "--precision", "bfloat16", "--no-bf16", env={"QD_CACHE_DIR": str(tmp_path / "cache")})
    assert both.returncode == 2 and both.stderr.strip().splitlines()[-1].startswith(
        "Error: --precision bfloat16 with --no-bf16"
    )


def test_bench_reference_child_times_the_plain_model_at_tensorflows_threads():
    """The reference's own process (`python -m qdcore.bench side SPEC`), for real: the row
    bench train reads, timed under TensorFlow's default threads as a plain script would be."""
    from qdcore.bench.bench import run_child

    tiny = {"T": 2, "enc_size": 16, "dec_size": 16, "z_size": 4}
    row = run_child({"kind": "reference", "iterations": 2, "batch_size": 8, "model": tiny})
    assert row["batch_size"] == 8 and row["steps"] == 2 and row["threads"] == [0, 0]
    for key in ("steps_per_s", "images_per_s", "images_per_s_median", "gflop_per_step", "achieved_gflop_per_s"):
        assert row[key] > 0, (key, row)


@pytest.mark.parametrize("argv", [["plugins"], ["plugins", "--json"], ["plugins", "--json", "--debug"]])
def test_listing_plugins_builds_no_command_line_app(argv):
    """Issue 28: `qd plugins` in at most 0.3 s. Building typer's app converts every option of
    every command (through pydantic); a listing is answered without it, with the same output."""
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\nfrom qdcore.cli import main\ntry:\n    main(%r)\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'pydantic' not in sys.modules and 'typer._adapters' not in sys.modules, 'the app was built'\n" % argv
    )
    env = {**os.environ, "QD_LOAD_PLUGINS": BUILTINS}
    fast = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env)
    assert fast.returncode == 0, fast.stderr
    # The same lines as the command built by typer (`qd plugins` is still an ordinary command).
    from typer.testing import CliRunner

    from qdcore.cli import app

    built = CliRunner().invoke(app, [a for a in argv if a != "--debug"], env=env)
    assert built.exit_code == 0 and fast.stdout == built.stdout
