"""`qd schema` and `-s key=value` overrides: one description of a recipe for the page, the
editor and the command line, built from the same signatures recipe validation checks."""

from __future__ import annotations

import json
import textwrap

import pytest

from qdcore import overrides
from qdcore.errors import RecipeError
from qdcore.plugin_manager import build
from qdcore.recipe import load
from qdcore.schema import recipe_schema, type_schema

from test_cli import OK, qd


@pytest.fixture(scope="module")
def registry():
    return build().registry


def _option(schema, kind, name):
    return next(o for o in schema["$defs"][kind]["anyOf"] if o.get("title") == name)


def test_schema_describes_every_registered_component_with_types_ranges_choices_defaults(registry):
    schema = recipe_schema(registry)
    for kind, key in (
        ("datasets", "dataset"),
        ("seed_strategies", "seed_strategy"),
        ("filters", "filter"),
        ("writers", "writer"),
    ):
        titles = {o.get("title") for o in schema["$defs"][key]["anyOf"]} - {None}
        assert titles == set(registry.names(kind))
    passes = _option(schema, "filter", "sharpen")["properties"]["passes"]
    assert passes == {"type": "integer", "minimum": 1, "maximum": 10, "default": 1, "x-type": "int between 1 and 10"}
    frames = _option(schema, "writer", "gif")["properties"]["frames"]
    assert set(frames["enum"]) == {"samples", "steps"} and frames["default"] == "samples"
    assert "path" in _option(schema, "writer", "gif")["properties"]
    image = _option(schema, "seed_strategy", "file-image")
    assert image["required"] == ["use", "path"] and image["properties"]["path"]["format"] == "path"
    assert image["x-source"] is True and image["x-plugin"] == "seeds"
    assert schema["properties"]["train"]["properties"]["iterations"]["default"] == 10_000
    assert _option(schema, "filter", "sharpen")["description"] == registry.get("filters", "sharpen").description


def test_type_schema_of_optional_and_lists():
    from typing import Optional, Union

    assert type_schema(Optional[int]) == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert type_schema(Union[str, list[str]]) == {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
    }


def test_schema_lists_a_third_party_plugin_the_moment_it_is_installed(fake_site, monkeypatch):
    fake_site(
        "qdtest-glow",
        {
            "qdtest_glow": textwrap.dedent("""
        from typing import Annotated, Literal
        from qdcore import Filter, Range, hookimpl

        class Glow(Filter):
            def __init__(self, radius: Annotated[float, Range(0.5, 8)] = 2.0, mode: Literal["soft", "hard"] = "soft"):
                self.radius = radius
            def apply(self, frames, ctx):
                return frames

        @hookimpl
        def qd_register_filters(register):
            register("glow", Glow, description="a soft halo around the ink")
    """)
        },
        {"glow": "qdtest_glow"},
    )
    monkeypatch.delenv("QD_LOAD_PLUGINS", raising=False)
    glow = _option(recipe_schema(build().registry), "filter", "glow")
    assert glow["description"] == "a soft halo around the ink" and glow["x-plugin"] == "glow"
    assert glow["properties"]["radius"] == {
        "type": "number",
        "minimum": 0.5,
        "maximum": 8,
        "default": 2.0,
        "x-type": "float between 0.5 and 8",
    }


def test_qd_schema_prints_json():
    p = qd("schema")
    assert p.returncode == 0, p.stderr
    schema = json.loads(p.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/") and "filter" in schema["$defs"]


@pytest.mark.parametrize(
    "item, expected",
    [
        ("train.iterations=200", {"train": {"iterations": 200}}),
        ("filters[0].passes=2", {"filters": [{"use": "sharpen", "passes": 2}]}),
        ("filters[1]=upscale", {"filters": ["sharpen", "upscale"]}),
        ("seeds=[training-batch, random-pixels]", {"seeds": ["training-batch", "random-pixels"]}),
        ("model.attention=false", {"model": {"attention": False}}),
        ("name='a: b'", {"name": "a: b"}),
        ("name=a: b", {"name": {"a": "b"}}),  # YAML, like the file: quote to keep a string
    ],
)
def test_overrides_set_yaml_typed_values(item, expected):
    data = {"dataset": {"use": "quickdraw"}, "filters": ["sharpen"]}
    out = overrides.apply(data, [item])
    for key, value in expected.items():
        assert out[key] == value
    assert data["filters"] == ["sharpen"], "the input is not changed"


@pytest.mark.parametrize(
    "item, fragment",
    [
        ("train.iterations", "is not KEY=VALUE"),
        ("bad..x=1", "cannot read the key path"),
        ("[0]=1", "cannot read the key path"),
        ("filters[5].passes=2", "filters has 1 step: the index may be 0 to 1"),
        ("name.first=x", "name is not a mapping"),
        ("train[0]=x", "train is not a list"),
        ("train.iterations=[1", "invalid YAML"),
    ],
)
def test_bad_overrides_name_the_path(item, fragment):
    with pytest.raises(RecipeError, match=None) as e:
        overrides.apply({"name": "x", "train": {}, "filters": ["sharpen"]}, [item])
    assert fragment in str(e.value)


def test_overrides_are_validated_like_the_file(tmp_path, registry):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(OK + "filters: [sharpen]\n")
    r = load(recipe, registry, ["train.iterations=200", "filters[0].passes=2"])
    assert r.train.iterations == 200 and r.filters[0].params["passes"] == 2
    with pytest.raises(RecipeError, match=r"filters\[0\].passes: 20 is out of range"):
        load(recipe, registry, ["filters[0].passes=20"])


@pytest.mark.parametrize("command", ["validate", "run", "train"])
def test_cli_set_option_bad_path_is_one_error_line_exit_2(command, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(OK + "filters: [sharpen]\n")
    p = qd(command, recipe, "-s", "filters[3].passes=2", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "Error: -s filters[3].passes: filters has 1 step: the index may be 0 to 1 (1 appends one)"
    ]
    p = qd(command, recipe, "-s", "train.iterations=-1", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"Error: {recipe}: train.iterations: -1 is out of range: must be between 0 and 1e+07"
    ]


def test_cli_set_option_applies(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(OK + "filters: [sharpen]\n")
    p = qd("validate", recipe, "-s", "filters[1]=upscale", "--set", "seeds=[training-batch, random-pixels]")
    assert p.returncode == 0, p.stderr
    assert "seeds: training-batch, random-pixels; filters: sharpen, upscale" in p.stdout
