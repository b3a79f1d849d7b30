"""Hardening round three, class 1 (issue 31): qd never replaces what is not its own.

An existing output that is not a regular file (a device, a FIFO, a socket, a folder) is refused
before any work, and so is a folder where no file can be made (procfs, sysfs). As root,
`qd run RECIPE --out /dev/null` once replaced the machine's /dev/null with a GIF."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from qdcore.atomic import atomic_path, check_target
from qdcore.errors import InputError

BUILTINS = "datasets,seeds,filters,writers"
RECIPE = (
    "name: outs\n"
    "dataset: {use: quickdraw, category: apple, limit: 40}\n"
    "model: {T: 2, enc_size: 8, dec_size: 8, z_size: 2, read_n: 2, write_n: 2}\n"
    "train: {iterations: 2, batch_size: 8, holdout: 0, precision: float32}\n"
    "generate: {n: 2}\n"
    "output: {use: gif}\n"
)


def cli(*argv, capsys):
    """qdcore.cli.main in this process, as typed: (exit code, stderr)."""
    from qdcore.cli import main

    with pytest.raises(SystemExit) as e:
        main([*map(str, argv)])
    return e.value.code, capsys.readouterr().err


def one_error(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in err and "unexpected" not in errors[0], err
    return errors[0]


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.gif"
    os.mkfifo(path)
    return path


@pytest.fixture
def sock(tmp_path):
    path = tmp_path / "s.gif"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    yield path
    s.close()


def kinds(tmp_path, fifo, sock) -> dict[str, Path]:
    folder = tmp_path / "folder.gif"
    folder.mkdir()
    return {"a character device": Path("/dev/null"), "a FIFO": fifo, "a socket": sock, "a folder": folder}


def test_atomic_path_never_replaces_a_device_fifo_socket_or_folder(tmp_path, fifo, sock):
    for kind, path in kinds(tmp_path, fifo, sock).items():
        before = os.stat(path)
        with pytest.raises(InputError, match=kind):
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"GIF89a")
        after = os.stat(path)
        assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino, stat.S_IFMT(before.st_mode)), kind
    assert not list(tmp_path.glob(".*.part*")), "no temporary file is left behind"


def test_a_fifo_made_while_writing_is_not_replaced(tmp_path):
    """The check runs again just before the rename: what appeared meanwhile stays."""
    path = tmp_path / "x.gif"
    with pytest.raises(InputError, match="a FIFO"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"GIF89a")
            os.mkfifo(path)
    assert stat.S_ISFIFO(os.stat(path).st_mode) and not list(tmp_path.glob(".*.part*"))


def test_a_regular_file_and_a_link_to_one_are_still_replaced(tmp_path):
    target = tmp_path / "old.gif"
    target.write_bytes(b"old")
    link = tmp_path / "link.gif"
    link.symlink_to(target)
    for path in (target, link):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"new")
        assert path.read_bytes() == b"new"


@pytest.mark.parametrize("where", ["/proc/qd-out.gif", "/proc/self/qd-out.gif", "/sys/qd-out.gif"])
def test_a_folder_where_no_file_can_be_made_is_refused_by_trying(where):
    """Root passes every permission bit check under /proc and /sys and still cannot create a file."""
    with pytest.raises(InputError, match="cannot write"):
        check_target(where)
    assert not Path(where).exists()


def test_check_target_leaves_nothing_behind(tmp_path):
    path = check_target(tmp_path / "new" / "x.gif")
    assert path == tmp_path / "new" / "x.gif" and sorted(tmp_path.iterdir()) == []


@pytest.mark.realdata
def test_qd_run_and_validate_refuse_a_non_regular_output_before_any_work(
    tmp_path, fifo, sock, capsys, monkeypatch, quickdraw_dir
):
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    cache = tmp_path / "cache"
    monkeypatch.setenv("QD_CACHE_DIR", str(cache))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    for kind, path in {**kinds(tmp_path, fifo, sock), "under procfs": Path("/proc/out.gif")}.items():
        before = os.stat(path) if path.exists() else None
        for command in (("run", recipe, "--out", path, "--quiet"), ("validate", recipe, "-s", f"output.path={path}")):
            code, err = cli(*command, capsys=capsys)
            line = one_error(err)
            assert code == 2 and str(path) in line, (kind, command, err)
        after = os.stat(path) if path.exists() else None
        assert (before and (before.st_ino, before.st_mode)) == (after and (after.st_ino, after.st_mode)), kind
    assert not (cache / "models").exists(), "nothing was trained"


def test_qd_models_export_refuses_a_fifo_or_device_before_reading_the_model(tmp_path, fifo, capsys, monkeypatch):
    monkeypatch.setenv("QD_LOAD_PLUGINS", "packs")
    for path in (fifo, Path("/dev/null")):
        code, err = cli("models", "export", "zoo-26", path, capsys=capsys)
        assert code == 2 and "qd replaces only regular files" in one_error(err), err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize(
    "where, text",
    [("output", 'output: {use: gif, path: "\\ud800\\udc00.gif"}\n'), ("model.from", 'model: {from: "\\ud800x"}\n')],
)
def test_names_no_file_can_have_are_one_printable_line(tmp_path, capsys, monkeypatch, where, text):
    """Found by the fuzzer: YAML's "\\ud800" escapes make lone surrogates, which no file name and no
    terminal encoding can hold (was: `unexpected UnicodeEncodeError`, while printing the error)."""
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: {use: quickdraw, category: apple}\n" + text)
    code, err = cli("validate", recipe, capsys=capsys)
    line = one_error(err)
    assert code == 2 and where in line and "\\ud800" in line, err
    line.encode("utf-8")  # printable as it is


# --- one memory budget (issue 31, class 2) ------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("generate: {n: 10000, best_of: 64}\n", ("640,000 pictures", "lower generate.n, generate.best_of")),
        (
            "generate: {n: 10000}\nmode: {use: complete, tries: 64}\nseeds: [training-batch]\n",
            ("640,000 pictures", "x mode 'complete'", "the mode's tries or frames"),
        ),
        ("generate: {n: 10000}\nfilters: [{use: upscale, size: 4096}]\n", ("at 4096x4096", "the filters' size")),
    ],
)
def test_sizes_from_the_recipe_are_checked_against_one_memory_budget(tmp_path, capsys, monkeypatch, text, fragments):
    """Was: `qd validate` ok, then `unexpected MemoryError` (or the OOM killer) after training."""
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS + ",generators,recognizers")
    monkeypatch.setenv("QD_MEMORY_LIMIT_MB", "8192")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: {use: quickdraw, category: apple}\n" + text)
    code, err = cli("validate", recipe, capsys=capsys)
    line = one_error(err)
    assert code == 2 and "above the 8 GB one run may use" in line and "QD_MEMORY_LIMIT_MB" in line, err
    for fragment in fragments:
        assert fragment in line, line


def test_the_memory_budget_is_half_the_machine_or_the_setting(tmp_path, capsys, monkeypatch):
    from qdcore import limits

    monkeypatch.delenv("QD_MEMORY_LIMIT_MB", raising=False)
    total = next(int(x.split()[1]) * 1024 for x in open("/proc/meminfo") if x.startswith("MemTotal:"))
    assert limits.memory_budget() == total // 2
    monkeypatch.setenv("QD_MEMORY_LIMIT_MB", "1")
    assert limits.memory_budget() == 1 << 20
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: {use: quickdraw, category: apple}\ngenerate: {n: 500}\n")
    code, err = cli("validate", recipe, capsys=capsys)  # 500 x 11 canvases of 28x28: 52 MB, above 1 MB
    assert code == 2 and "generate.n 500" in one_error(err)
    monkeypatch.setenv("QD_MEMORY_LIMIT_MB", "lots")
    code, err = cli("validate", recipe, capsys=capsys)
    assert code == 2 and "QD_MEMORY_LIMIT_MB='lots' is not a number of megabytes" in one_error(err)


def test_the_studio_answers_the_memory_budget_with_a_400(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from qdcore.plugin_manager import build
    from qdcore.studio.server import create_app
    from qdcore.studio.session import Studio

    monkeypatch.delenv("QD_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv("QD_MEMORY_LIMIT_MB", "8192")
    studio = Studio(build(), None, workdir=tmp_path / "studio")
    try:
        with TestClient(create_app(studio)) as c:
            recipe = c.get("/api/recipe").json()["recipe"]
            r = c.post("/api/validate", json={"recipe": {**recipe, "generate": {"n": 10000, "best_of": 64}}})
    finally:
        studio.close()
    assert r.status_code == 400
    line = r.json()["error"]
    assert line.startswith("Error: studio: 640,000 pictures") and "lower generate.n, generate.best_of" in line


# --- writers know their limits (issue 31, class 4) ----------------------------------------------


@pytest.mark.parametrize(
    "output, fragment",
    [
        ("{use: gif, frames: steps, columns: 1}", "make 113998x112 images, and a GIF holds at most 65,535 pixels"),
        ("{use: webp, frames: steps, columns: 1}", "a WebP holds at most 16,383 pixels"),
        ("{use: mp4, frames: steps, columns: 1}", "an H.264 MP4 holds at most 8,192 pixels"),
    ],
)
def test_a_canvas_past_the_formats_limit_is_refused_at_validation(tmp_path, capsys, monkeypatch, output, fragment):
    """Was: trained, then `unexpected RuntimeError` / `OverflowError` plus a library traceback."""
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "dataset: {use: quickdraw, category: apple}\ngenerate: {n: 1000}\n"
        f"filters: [{{use: upscale, size: 112}}]\noutput: {output}\n"
    )
    code, err = cli("validate", recipe, capsys=capsys)
    line = one_error(err)
    assert code == 2 and "output" in line and fragment in line, err
    recipe.write_text(recipe.read_text().replace("n: 1000", "n: 16"))  # 16 fit every format
    assert cli("validate", recipe, capsys=capsys)[0] == 0


# Two ways an ffmpeg fails on the frames: after reading them all (its exit status only), or
# at once, so that writing the frames breaks the pipe (imageio-ffmpeg re-raises that as a
# bare OSError). Which one a real failure is depends on when it ends and on the load; each
# must read the same. `cat` in the foreground: a background one would read /dev/null.
FAKE_FFMPEG = """#!/bin/sh
if [ "$1" = "-version" ]; then echo "ffmpeg version 0 (a test's stand-in)"; exit 0; fi
{reads}
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "[libx264 @ 0x0] log line $i" >&2; done
echo "Conversion failed!" >&2
exit 1
"""


@pytest.mark.parametrize("reads", ["cat > /dev/null", "exec 0<&-"], ids=["reads-every-frame", "breaks-the-pipe"])
def test_an_mp4_encoder_that_is_missing_or_fails_is_one_line(tmp_path, capsys, monkeypatch, quickdraw_dir, reads):
    """Was: 9-18 lines of ffmpeg log and a broken pipe "in a file" with no path; then, when
    the pipe broke first, "the mp4 encoder failed ([Errno 32] Broken pipe)"."""
    monkeypatch.setenv("QD_LOAD_PLUGINS", BUILTINS)
    monkeypatch.setenv("QD_CACHE_DIR", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("output: {use: gif}", "output: {use: mp4}"))
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/bin/false")  # there, but does not run
    code, err = cli("validate", recipe, capsys=capsys)
    assert code == 2 and "the mp4 writer's ffmpeg does not run" in one_error(err)
    fake = tmp_path / "ffmpeg"
    fake.write_text(FAKE_FFMPEG.format(reads=reads))
    fake.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake))  # runs, then fails on the frames
    out = tmp_path / "x.mp4"
    code, err = cli("run", recipe, "--out", out, "--quiet", capsys=capsys)
    line = one_error(err)
    assert code == 1 and f"cannot write {out}: the mp4 encoder" in line and "wrote no video" in line, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".x.*"))


def test_an_encoders_failure_is_one_line_naming_the_file_and_a_full_disk_stays_a_full_disk(tmp_path):
    import errno

    from qdcore.errors import WriteError
    from qdplugins.writers import encoding

    path = tmp_path / "x.webp"
    for error in (
        ValueError("image too wide\nmore"),
        OverflowError("int too large"),
        BrokenPipeError(32, "Broken pipe"),
    ):
        with pytest.raises(WriteError, match=rf"cannot write {path}: the webp encoder failed \(.*\)$"):
            with encoding(path, "webp"):
                raise error
    with pytest.raises(OSError) as e:  # atomic_path's own line: free some space or write elsewhere
        with encoding(path, "webp"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not isinstance(e.value, WriteError)
