"""The plugin manager and the registry: isolation, duplicates, unknown names, provenance."""

from __future__ import annotations

import warnings

import pytest

from qdcore import Filter, PluginError, UnknownNameError, hookimpl
from qdcore.plugin_manager import build

GOOD = """
from qdcore import hookimpl, Filter
class Double(Filter):
    def __init__(self, k: float = 2.0): self.k = k
    def apply(self, frames, ctx): return frames * self.k
@hookimpl
def qd_register_filters(register):
    register("double", Double, description="twice as bright")
"""
BROKEN = "raise ImportError('this plugin needs a library that is not installed')\n"


class Twice(Filter):
    def apply(self, frames, ctx):
        return frames


class DuplicateOfSharpen:
    @hookimpl
    def qd_register_filters(self, register):
        register("double", Twice, description="same name as qdtest_good's")


@pytest.fixture
def only(monkeypatch):
    def restrict(*names):
        monkeypatch.setenv("QD_LOAD_PLUGINS", ",".join(names))

    return restrict


def test_third_party_entry_point_is_registered_with_its_provenance(fake_site, only):
    fake_site("qdtest-good", {"qdtest_good": GOOD}, {"good": "qdtest_good"}, version="1.2.3")
    only("good")
    p = build()
    entry = p.registry.get("filters", "double")
    assert entry.plugin == "good" and entry.version == "1.2.3"
    assert entry.description == "twice as bright"
    assert p.info["good"].hooks == ["qd_register_filters"]
    assert p.registry.provided_by("good")["filters"] == ["double"]


def test_broken_plugin_warns_and_the_others_still_work(fake_site, only):
    fake_site("qdtest-good", {"qdtest_good": GOOD}, {"good": "qdtest_good"})
    fake_site("qdtest-broken", {"qdtest_broken": BROKEN}, {"broken": "qdtest_broken"})
    only("good", "broken")
    with pytest.warns(UserWarning, match="'broken' failed to load"):
        p = build()
    assert "needs a library" in p.info["broken"].error
    assert p.registry.get("filters", "double").plugin == "good"
    with pytest.raises(UnknownNameError, match="failed to load: broken"):
        p.registry.get("filters", "nothing-here")


def test_load_restriction_env_var_excludes_other_entry_points(fake_site, only):
    fake_site("qdtest-good", {"qdtest_good": GOOD}, {"good": "qdtest_good"})
    only()  # set but empty: load nothing
    p = build()
    assert p.info == {} and p.registry.names("filters") == []


def test_duplicate_names_fail_naming_both_plugins(fake_site, only):
    fake_site("qdtest-good", {"qdtest_good": GOOD}, {"good": "qdtest_good"})
    only("good")
    with pytest.raises(PluginError, match=r"'double' is registered twice: by plugin 'good' and by plugin 'dup'"):
        build(extra=[("dup", DuplicateOfSharpen())])


def test_unknown_name_suggests_close_names_and_lists_all(only):
    only()

    class P:
        @hookimpl
        def qd_register_filters(self, register):
            for name in ("sharpen", "edge-enhance", "anti-alias"):
                register(name, Twice)

    reg = build(extra=[("p", P())]).registry
    with pytest.raises(UnknownNameError) as e:
        reg.get("filters", "sharpn")
    assert "Can't find filter 'sharpn'. Did you mean 'sharpen'?" in str(e.value)
    assert "Available: anti-alias, edge-enhance, sharpen" in str(e.value)
    with pytest.raises(UnknownNameError) as e:
        reg.get("filters", "zzz")
    assert "Did you mean" not in str(e.value)  # nothing is close: no misleading guess


def test_misspelled_hook_fails_instead_of_being_ignored(only):
    only()

    class Typo:
        @hookimpl
        def qd_register_filter(self, register):  # missing the final "s"
            register("x", Twice)

    with pytest.raises(PluginError, match="qd_register_filter"):
        build(extra=[("typo", Typo())])


def test_hook_that_raises_is_recorded_as_broken(only):
    only()

    class Crashes:
        @hookimpl
        def qd_register_writers(self, register):
            raise RuntimeError("boom")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = build(extra=[("crashes", Crashes())])
    assert "boom" in p.info["crashes"].error


def test_non_callable_factory_is_refused(only):
    only()

    class Bad:
        @hookimpl
        def qd_register_datasets(self, register):
            register("numbers", 42)

    with pytest.raises(PluginError, match="not callable"):
        build(extra=[("bad", Bad())])
