"""Generation modes (docs/generation.md): `complete` finishes a partial drawing, `morph`
turns one drawing into another; both reached through the `qd_register_generators` hook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import TINY_RECIPE
from qdcore import Context, InputError, RecipeError
from qdcore.config import ModelConfig
from qdcore.draw import Draw
from qdcore.plugin_manager import build
from qdcore.recipe import parse
from qdplugins.generators import Complete, Morph, eased, slerp
from qdplugins.seeds import RemoveInk

CFG = ModelConfig(height=12, width=12, T=4, enc_size=16, dec_size=16, z_size=3, read_n=2, write_n=3)
QD = str(Path(sys.executable).parent / "qd")


def ctx(seed=0):
    return Context((12, 12), np.random.default_rng(seed), Path("."), None, Path("."))


def images(n=2, seed=0):
    return np.random.default_rng(seed).random((n, 12, 12)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return Draw(CFG, seed=1)


@pytest.fixture(scope="module")
def zoo():
    return Draw(CFG, seed=1, classes=["cat", "dog", "apple"])


def test_complete_follows_the_encoder_for_k_steps_then_the_prior(model):
    x, eps = images(), np.random.default_rng(3).standard_normal((4, 2, 3)).astype(np.float32)
    _, _, full, _, z_full = model._run(tf.constant(x), tf.constant(eps), True, True)
    _, _, part, _, z_part = model._run(tf.constant(x), tf.constant(eps), True, True, follow=tf.constant(2))
    np.testing.assert_allclose(part[:2], full[:2], atol=1e-6)  # steps 1..k: the reconstruction's
    np.testing.assert_allclose(z_part[2:], eps[2:])  # steps k+1..T: z_t is the prior's draw
    assert not np.allclose(part[2:], full[2:])
    # k = T is the reconstruction itself.
    np.testing.assert_allclose(model.complete(x, 4, seed=0).canvases, model.reconstruct(x, seed=0).canvases)


def test_decode_of_encode_is_the_mean_reconstruction(model):
    x = images()
    z = model.encode(x)
    assert z.shape == (4, 2, 3)
    zero = np.zeros((4, 2, 3), np.float32)
    mean = model._drawing(model._reconstruct_fn(x, zero, model.labels(2)), "reconstruction")
    np.testing.assert_allclose(model.decode(z).canvases, mean.canvases, atol=1e-6)


def test_a_category_blend_is_each_category_at_its_ends(zoo):
    z = np.random.default_rng(0).standard_normal((4, 3, 3)).astype(np.float32)
    cat, dog = zoo.decode(z, "cat").canvases, zoo.decode(z, "dog").canvases
    ends = zoo.decode(z, "cat", towards="dog", amount=np.array([0.0, 1.0, 0.5])).canvases
    np.testing.assert_allclose(ends[:, 0], cat[:, 0], atol=1e-5)
    np.testing.assert_allclose(ends[:, 1], dog[:, 1], atol=1e-5)
    assert not np.allclose(ends[:, 2], cat[:, 2]) and not np.allclose(ends[:, 2], dog[:, 2])


def test_complete_gives_tries_completions_per_seed_with_the_partial_drawing(model):
    drawn = Complete(k=2, tries=3).generate(model, images(2), 2, 0, ctx())
    assert drawn.canvases.shape == (4, 6, 12, 12) and drawn.source == "completion"
    np.testing.assert_array_equal(drawn.given[:3], np.repeat(images(2)[:1], 3, axis=0))
    assert not np.allclose(drawn.canvases[-1, 0], drawn.canvases[-1, 1])  # different z, different endings


def test_morph_plays_forth_and_back_between_its_ends(model):
    x = images(2)
    drawn = Morph(frames=5).generate(model, x, 2, 0, ctx())
    assert drawn.canvases.shape == (8, 2, 12, 12) and drawn.source == "morph"
    np.testing.assert_allclose(drawn.canvases[0], model.decode(model.encode(x)).final, atol=1e-6)
    np.testing.assert_allclose(drawn.canvases[4, 0], model.decode(model.encode(x[::-1])).final[0], atol=1e-6)
    np.testing.assert_allclose(drawn.canvases[5], drawn.canvases[3])  # the way back retraces the way there
    once = Morph(frames=5, forth_and_back=False).generate(model, None, 3, 0, ctx())
    assert once.canvases.shape == (5, 3, 12, 12)


def test_morph_from_one_category_into_another(zoo):
    drawn = Morph(frames=4, start="cat", end="dog", forth_and_back=False).generate(zoo, None, 2, 0, ctx())
    assert drawn.canvases.shape == (4, 2, 12, 12)


def test_slerp_keeps_its_ends_and_the_length_of_equal_vectors():
    a, b = np.array([[3.0, 0.0]]), np.array([[0.0, 3.0]])
    path = slerp(a, b, eased(5))
    np.testing.assert_allclose(path[0], a, atol=1e-6)
    np.testing.assert_allclose(path[-1], b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(path, axis=-1), 3.0, atol=1e-5)
    assert np.all(np.diff(eased(6)) > 0) and eased(6)[0] == 0 and eased(6)[-1] == 1


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda m, z: m.complete(images(), 5), "k = 5 glimpses is outside 1..4"),
        (lambda m, z: m.complete(images(), 0), "outside 1..4"),
        (
            lambda m, z: Complete().generate(m, np.zeros((2, 12, 12), np.float32), 2, 0, ctx()),
            "partial drawing 0 is blank",
        ),
        (lambda m, z: Morph.encode_ends(m, images(2), images(3)), "the two ends differ"),
        (lambda m, z: Morph(start="cat").generate(m, None, 2, 0, ctx()), "not class-conditional"),
        (
            lambda m, z: Morph(start="cat", end="dgo").generate(z, None, 2, 0, ctx()),
            "not trained on category 'dgo' (did you mean 'dog'?)",
        ),
    ],
)
def test_bad_input_is_one_input_error(model, zoo, call, fragment):
    with pytest.raises(InputError) as e:
        call(model, zoo)
    assert fragment in str(e.value)


def test_complete_needs_seed_images(model):
    with pytest.raises(RecipeError, match="continues partial drawings"):
        Complete().generate(model, None, 2, 0, ctx())


def test_remove_ink_keeps_one_half_of_each_drawing():
    x = np.zeros((1, 12, 12), np.float32)
    x[0, 2:10, 3:9] = 1.0  # ink on rows 2..9, columns 3..8
    top = RemoveInk(keep="top").apply(x, None, ctx())
    assert top[0, 2:6, 3:9].min() == 1 and top[0, 6:].sum() == 0
    right = RemoveInk(keep="right").apply(x, None, ctx())
    assert right[0, :, :6].sum() == 0 and right[0, 2:10, 6:9].min() == 1
    assert x.sum() == 48  # the input is left alone


def test_recipes_name_modes_and_the_schema_knows_them(tmp_path):
    registry = build().registry
    assert registry.names("generators") == ["complete", "morph"]
    r = parse(
        {
            "dataset": {"use": "quickdraw", "category": "cat"},
            "mode": {"use": "complete", "k": 3, "tries": 2},
            "seeds": ["training-batch", {"use": "remove-ink", "keep": "left"}],
        },
        tmp_path / "r.yaml",
        registry,
    )
    assert r.mode.use == "complete" and r.mode.params == {"k": 3, "tries": 2}
    with pytest.raises(RecipeError, match="best_of"):
        parse(
            {"dataset": {"use": "quickdraw", "category": "cat"}, "mode": "morph", "generate": {"best_of": 2}},
            tmp_path / "r.yaml",
            registry,
        )
    from qdcore.schema import recipe_schema

    schema = recipe_schema(registry)
    modes = {o["title"]: o for o in schema["$defs"]["generator"]["anyOf"] if "title" in o}
    assert set(modes) == {"complete", "morph"}
    assert modes["morph"]["properties"]["frames"] == {
        "type": "integer",
        "minimum": 2,
        "maximum": 256,
        "x-type": "int between 2 and 256",
        "default": 16,
    }


def qd(*args, cwd):
    return subprocess.run(
        [QD, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=dict(os.environ), timeout=600
    )


@pytest.mark.realdata
def test_finish_and_morph_from_recipes_on_the_command_line(tiny_model, tmp_path):
    """The tiny model of conftest (apple, T=4): completions of half-erased real apples, a morph
    between real apples; bad k and a blank partial drawing are one Error line and exit 2."""
    base = TINY_RECIPE.replace("generate: {n: 16}\n", "generate: {n: 2}\n").replace(
        "output: {use: gif, frames: steps, attention: true, duration: 0.1}\n", ""
    )
    finish = tmp_path / "finish.yaml"
    finish.write_text(
        base + "mode: {use: complete, k: 2, tries: 3}\nseeds: [training-batch, {use: remove-ink, keep: top}]\n"
        "output: {use: gif, frames: steps, columns: 3}\n"
    )
    r = qd("run", finish, "--out", tmp_path / "finish.gif", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    gif = Image.open(tmp_path / "finish.gif")
    assert gif.n_frames == 5 and gif.size == (3 * 28 + 4, 2 * 28 + 2)  # the partial drawings, then T=4 steps
    gif.seek(4)
    rgb = np.asarray(gif.convert("RGB")).astype(int)
    assert (rgb[..., 2] - rgb[..., 0] > 60).any()  # the model's ink is blue, the person's grey

    morph = tmp_path / "morph.yaml"
    morph.write_text(
        base + "mode: {use: morph, frames: 4}\nseeds: [training-batch]\noutput: {use: gif, frames: steps}\n"
    )
    r = qd("run", morph, "--out", tmp_path / "morph.gif", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "morph.gif").n_frames == 6  # 4 there, 2 back

    blank = tmp_path / "blank.png"
    Image.new("L", (28, 28), 255).save(blank)
    for override, fragment in [
        ("mode.k=9", "k: 9 is beyond the model's T = 4 steps"),  # now at validation (issue 31)
        (f"seeds=[{{use: file-image, path: {blank}}}]", "partial drawing 0 is blank"),
    ]:
        r = qd("run", finish, "--out", tmp_path / "bad.gif", "-s", override, "--quiet", cwd=tmp_path)
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]  # TensorFlow logs aside
        assert r.returncode == 2 and len(errors) == 1 and fragment in errors[0] and "Traceback" not in r.stderr, (
            r.stderr
        )
        assert not (tmp_path / "bad.gif").exists()


@pytest.mark.parametrize(
    "mode, seeds, dataset, fragment",
    [
        ("{use: complete, k: 9}", "[training-batch]", "apple", "mode: complete: k: 9 is beyond the model's T = 4"),
        ("{use: complete}", "[prior]", "apple", "the seed chain gives none (`prior`)"),
        ("{use: morph, start: cat, end: dog}", "[prior]", "apple", "learns one category, so it knows none"),
        ("{use: morph, start: cat, end: zebra}", "[prior]", "[cat, dog]", "'zebra' is not a category"),
    ],
)
def test_modes_check_what_the_recipe_says_at_validation(tmp_path, capsys, monkeypatch, mode, seeds, dataset, fragment):
    """Issue 31: these were found only after training, when the mode ran."""
    from qdcore.cli import main

    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers,generators")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"dataset: {{use: quickdraw, category: {dataset}, limit: 40}}\nmodel: {{T: 4}}\nmode: {mode}\nseeds: {seeds}\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["validate", str(recipe)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert e.value.code == 2 and len(errors) == 1 and fragment in errors[0] and "Traceback" not in err, err


def test_a_morph_between_categories_a_shared_model_knows_passes_validation(tmp_path, capsys, monkeypatch):
    from qdcore.cli import main

    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers,generators,packs")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "dataset: {use: quickdraw, category: cat}\nmodel: {from: zoo-26}\n"
        "mode: {use: morph, start: cat, end: dog}\nseeds: [prior]\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["validate", str(recipe)])
    assert e.value.code == 0, capsys.readouterr().err


def test_a_blank_partial_drawing_from_a_file_is_refused_at_validation(tmp_path, capsys, monkeypatch):
    """The file decides the partial drawings, so `qd validate` looks at them (issue 31)."""
    from qdcore.cli import main

    monkeypatch.setenv("QD_LOAD_PLUGINS", "datasets,seeds,filters,writers,generators")
    Image.new("L", (28, 28), 255).save(tmp_path / "blank.png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "dataset: {use: quickdraw, category: apple}\nmode: {use: complete}\n"
        f"seeds: [{{use: file-image, path: {tmp_path / 'blank.png'}}}]\n"
    )
    with pytest.raises(SystemExit) as e:
        main(["validate", str(recipe)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "mode: complete: partial drawing 0 is blank" in err and err.count("Error:") == 1, err
    img = Image.new("L", (28, 28), 255)  # a dark stroke on white: ink to continue
    img.paste(0, (5, 12, 22, 15))
    img.save(tmp_path / "blank.png")
    with pytest.raises(SystemExit) as e:
        main(["validate", str(recipe)])
    assert e.value.code == 0, capsys.readouterr().err
