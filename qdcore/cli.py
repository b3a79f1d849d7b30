"""The `qd` command. The only place where domain errors become one `Error: ...` line on
stderr and an exit code: 2 for a bad recipe, bad input or unknown name; 1 for a failure
while running. `--debug` (anywhere on the line, or QD_DEBUG=1) shows the traceback."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import List, Optional, get_args, get_type_hints

import typer

from . import __version__, interrupt
from .config import TrainConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train DRAW on Quick, Draw! doodles and turn what it draws into GIFs.",
)


# `qd bench train --precision` offers exactly train.precision's choices (config.py).
Precision = Enum("Precision", {c: c for c in get_args(get_type_hints(TrainConfig)["precision"])}, type=str)


bench_app = typer.Typer(no_args_is_help=True, help="Measure speed and quality; prints figures.")
app.add_typer(bench_app, name="bench")

DebugOpt = typer.Option(False, "--debug", help="Show the full traceback on error.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars or messages.")
SetOpt = typer.Option(
    None,
    "--set",
    "-s",
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. -s train.iterations=200 -s filters[0].passes=2 (YAML value).",
)


def _version(value: bool):
    if value:
        typer.echo(f"qd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = DebugOpt,
):
    pass


@functools.lru_cache(maxsize=None)
def _plugins():
    from .plugin_manager import build

    return build()


def _recipe(path: Path, *, iterations=None, seed=None, n=None, best_of=None, sets=()):
    from .recipe import load

    return load(path, _plugins().registry, sets or ()).with_overrides(
        iterations=iterations, seed=seed, n=n, best_of=best_of
    )


def _reporter(quiet: bool, lines: bool = True):
    """The Reporter of a command: its words go to stderr (none with --quiet); without
    `lines`, a run's own lines ("dataset: ...") are left out."""
    from .reporter import Reporter

    return Reporter(quiet, None if quiet or not lines else (lambda m: typer.echo(m, err=True)))


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="The recipe YAML file."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Where to write (default: the recipe's output.path, else ./NAME.gif)."
    ),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Override train.iterations."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
    sets: Optional[List[str]] = SetOpt,
    quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
):
    """Run a recipe: train (or reuse the cached model), seed, generate, filter, write."""
    from . import engine

    r = _recipe(recipe, iterations=iterations, seed=seed, sets=sets)
    result = engine.run(r, out=out, reporter=_reporter(quiet))
    if not quiet:
        typer.echo(f"wrote {result.path} ({result.seconds:.1f} s)", err=True)
    typer.echo(str(result.path))


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="The recipe YAML file."),
    sets: Optional[List[str]] = SetOpt,
    debug: bool = DebugOpt,
):
    """Check a recipe (names, parameters, files, the models it names) without running anything."""
    from . import engine

    r = _recipe(recipe, sets=sets)
    engine.Run(r).output_path()  # the models it names are found (or refused) as the Run resolves them
    typer.echo(
        f"{recipe}: ok ({r.dataset.use}; seeds: {', '.join(s.use for s in r.seeds)}; "
        f"filters: {', '.join(f.use for f in r.filters) or 'none'}; output: {r.output.use})"
    )


@app.command()
def plugins(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."), debug: bool = DebugOpt
):
    """List installed plugins and what each provides."""
    p = _plugins()
    rows = []
    for name, info in sorted(p.info.items()):
        row = {"name": name, "version": info.version, "hooks": info.hooks, "provides": p.registry.provided_by(name)}
        if info.error:
            row["error"] = info.error
        rows.append(row)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no qd plugins are installed (or QD_LOAD_PLUGINS excludes them all)")
    for row in rows:
        status = (
            f"BROKEN: {row['error']}"
            if "error" in row
            else ", ".join(f"{k.replace('_', ' ')}: {', '.join(v)}" for k, v in row["provides"].items() if v)
            or "provides nothing"
        )
        typer.echo(f"{row['name']:<16} {row['version'] or '-':<10} {status}")


@app.command()
def schema(debug: bool = DebugOpt):
    """Print the JSON Schema of a recipe, with every installed plugin's parameters.

    Editors use it for completion: `qd schema > qd-recipe.schema.json`, then start a recipe
    with `# yaml-language-server: $schema=qd-recipe.schema.json` (docs/recipes.md)."""
    from .schema import recipe_schema

    typer.echo(json.dumps(recipe_schema(_plugins().registry), indent=2))


@app.command()
def studio(
    recipe: Optional[Path] = typer.Argument(None, help="A recipe to start from (default: a small cat recipe)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind; anything but loopback is reachable by others."
    ),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser."),
    debug: bool = DebugOpt,
):
    """Open the studio: a local web page to draw a seed, choose plugins, train and watch DRAW draw."""
    from .studio.server import serve

    serve(recipe, host=host, port=port, open_browser=not no_browser, plugins=_plugins())


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="The recipe YAML file."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Override train.iterations."),
    restart: bool = typer.Option(False, "--restart", help="Discard this recipe's checkpoints and train from scratch."),
    sets: Optional[List[str]] = SetOpt,
    quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
):
    """Train (or resume training) the recipe's model into the cache."""
    from . import engine

    r = _recipe(recipe, iterations=iterations, sets=sets)
    trained = engine.Run(r, _reporter(quiet)).model(restart=restart)
    typer.echo(f"model at step {trained.step}: {trained.workdir}")


@app.command()
def sample(
    recipe: Path = typer.Argument(..., help="The recipe YAML file."),
    n: Optional[int] = typer.Option(None, "--n", help="How many samples (default: generate.n)."),
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="The PNG sheet to write."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
    quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
):
    """Draw true samples from the prior (decoder only) of the trained model, as a PNG sheet.

    The recipe's filters and generate.best_of are applied (an upscale makes the sheet
    readable); its seeds and writer are not used."""
    pipeline, path = _as_sheet(_recipe(recipe, seed=seed, n=n), out, _reporter(quiet, lines=False))
    pipeline.data()
    pipeline.check_drawing()
    pipeline.model()
    typer.echo(str(pipeline.write(path, pipeline.drawing(prior=True))))


def _as_sheet(r, out: Path, reporter):
    """The recipe with its writer swapped for png-sheet: its Run, and the output path checked
    before any training."""
    from dataclasses import replace

    from . import engine
    from .recipe import Step

    sheet = Step("png-sheet", {}, _plugins().registry.get("writers", "png-sheet"), "output", str(r.path))
    pipeline = engine.Run(replace(r, output=sheet), reporter)
    return pipeline, pipeline.output_path(out)


@app.command("eval")
def evaluate(
    recipe: Path = typer.Argument(..., help="The recipe YAML file."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Override train.iterations."),
    n: int = typer.Option(
        500, "--n", help="Prior samples judged by the recognizer, and real drawings in each comparison set."
    ),
    best_of: Optional[int] = typer.Option(None, "--best-of", help="Override generate.best_of."),
    real: bool = typer.Option(
        False,
        "--real",
        help="Judge the recipe's filters on n real drawings instead (raw beside filtered); no model is trained.",
    ),
    reconstruct: bool = typer.Option(
        False,
        "--reconstruct",
        help="Also judge the model's reconstructions of n held-out real drawings (is the decoder or the prior short?).",
    ),
    sets: Optional[List[str]] = SetOpt,
    quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
):
    """Print the held-out bound (nats per image, L^x and L^z) of the recipe's trained model, and
    what the recipe's recognizer makes of n prior samples: the fraction it recognizes, their
    Frechet distance to real drawings and its real-vs-real floor (docs/quality.md). With
    --reconstruct, beside them the same figures for its reconstructions of n real drawings it
    never trained on ("reconstructions"). With --real, the same figures for n real drawings
    the recognizer never trained on, as they are and after the recipe's filters: a display
    chain should leave them as recognizable."""
    from . import engine, models
    from .training import train as trainer
    from .errors import InputError

    r = _recipe(recipe, iterations=iterations, n=n, best_of=best_of, sets=sets or ())
    pipeline = engine.Run(r, _reporter(quiet))
    category, why_not = pipeline.eval_category()
    if real and reconstruct:
        raise InputError("--real judges real drawings and needs no model; --reconstruct judges the model: give one")
    if reconstruct and category is None:
        raise InputError(f"--reconstruct needs the recognizer figures, and there are none: {why_not}")
    if real:
        if category is None:
            raise InputError(f"--real needs the recognizer figures, and there are none: {why_not}")
        typer.echo(json.dumps({"recipe": str(recipe), **pipeline.real_recognition(category)}))
        return
    data = pipeline.data()
    if category is None:
        warnings.warn(f"no recognizer figures: {why_not}")
    trained = pipeline.model()
    owner = pipeline.trained_recipe()
    figures = trainer.evaluate(trained, data, owner.train)
    figures["reconstruction_error"] = trainer.reconstruction_error(trained, data, owner.train, n=n, seed=r.seed)
    if owner is r:  # a shared model scored on one category's drawings keeps its own figures
        models.record_evaluation(trained.workdir, {"step": trained.step, **figures})
    if category is not None:
        figures.update(pipeline.recognition(category))
    if reconstruct:
        figures["reconstructions"] = pipeline.reconstruction_recognition(category, n)
    typer.echo(json.dumps({"recipe": str(recipe), "step": trained.step, **figures}))


models_app = typer.Typer(help="List trained models and model packs; move them between machines (docs/packs.md).")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def list_models(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    debug: bool = DebugOpt,
):
    """List the trained models in the cache, then imported and installed model packs: name,
    categories, steps, held-out bound, size, where each comes from, path."""
    if ctx.invoked_subcommand is not None:
        return
    from . import models, packs, paths

    rows = models.listing(paths.cache_dir()) + packs.listing(paths.cache_dir(), _plugins().registry.entries["models"])
    typer.echo(json.dumps(rows, indent=2) if as_json else models.table(rows))


@models_app.command("export")
def export_model(
    name: str = typer.Argument(..., help="A model `qd models` lists (a cached model's name, or its folder name)."),
    file: Path = typer.Argument(
        ..., help="The pack file to write: zoo-26.safetensors (format 2; a .qdpack name writes format 1)."
    ),
    description: Optional[str] = typer.Option(None, "--description", help="One line for the manifest: what made it."),
    figures: Optional[Path] = typer.Option(
        None, "--figures", help="A JSON object of recognizer figures (e.g. qd eval's output) for the manifest."
    ),
    as_name: Optional[str] = typer.Option(
        None, "--name", help="The pack's name (default: the model's), e.g. a relay leg's model as the next zoo-26."
    ),
    debug: bool = DebugOpt,
):
    """Write a trained model as one pack file (manifest + weights, no optimizer state) and its
    model card beside it (FILE's stem + .README.md). The manifest keeps the training legs that
    made the weights: steps, wall and CPU seconds, and machine of each (docs/packs.md)."""
    from . import packs, paths

    pack = packs.export(
        name,
        file,
        paths.cache_dir(),
        _plugins().registry.entries["models"],
        description=description,
        figures=figures,
        as_name=as_name,
    )
    typer.echo(
        f"wrote {file} ({pack.name}, format {pack.version}, {file.stat().st_size / 2**20:.1f} MB) "
        f"and its card {packs.card_path(file)}"
    )


@models_app.command("import")
def import_model(
    file: Path = typer.Argument(..., help="A pack file written by `qd models export`."),
    force: bool = typer.Option(False, "--force", help="Replace an imported model of the same name."),
    debug: bool = DebugOpt,
):
    """Check a pack file (.safetensors or .qdpack: structure, checksum, size) and add it to the
    cache, whole or not at all."""
    from . import packs, paths

    pack = packs.import_pack(file, paths.cache_dir(), force=force)
    typer.echo(f"imported {pack.name!r} into {pack.path}")


@bench_app.command("train")
def bench_train(
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="qd's side of the comparison (default: qd's default)."
    ),
    iterations: int = typer.Option(30, "--iterations", min=1, help="Timed steps per configuration."),
    precision: Precision = typer.Option(
        Precision("auto"), "--precision", help="qd's side: only the step plans of this arithmetic (auto: all)."
    ),
    no_bf16: bool = typer.Option(
        False, "--no-bf16", help="Leave out the bfloat16 step plans, as on a float32-only CPU (or QD_PLAN_NO_BF16=1)."
    ),
    quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
):
    """Training speed: the blog's model at batch 100 (plain tf.function) beside every step
    plan qd's `auto` chooses from at batch 400 and at batch 20 (or --batch-size alone), each
    with its share of numpy's float32 matmul peak, and which one auto chose (cached for training).

    Each measurement runs in a fresh process of its own, one after the other."""
    from .bench import bench

    typer.echo(
        json.dumps(
            bench.bench_train(batch_size, iterations, _reporter(quiet), precision=precision.value, bf16=not no_bf16)
        )
    )


@bench_app.command("quality")
def bench_quality(
    recipe: Path = typer.Argument(
        ..., help="A recipe naming the dataset and training settings (e.g. recipes/cat-quality.yaml)."
    ),
    minutes: List[float] = typer.Option(
        [5.0, 10.0, 20.0], "--minutes", help="Evaluate the held-out bound at these marks."
    ),
    sheet: Path = typer.Option(Path("quality-samples.png"), "--sheet", help="PNG sheet of prior samples at the end."),
    quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
):
    """Held-out bound after N minutes of training at the recipe's settings, plus a sheet of
    prior samples (through the recipe's filters, like `qd sample`)."""
    from .bench import bench

    pipeline, path = _as_sheet(_recipe(recipe), sheet, _reporter(quiet, lines=False))
    r = pipeline.recipe
    figures, drawing = bench.bench_quality(
        r.model, r.train, pipeline.data(), sorted(minutes), r.generate.n, _reporter(quiet)
    )
    written = pipeline.write(path, pipeline.filtered(drawing))
    typer.echo(json.dumps({**figures, "sheet": str(written)}))


@bench_app.command("frontier")
def bench_frontier(
    recipe: Path = typer.Argument(
        ..., help="The recipe whose configuration the candidates change (e.g. recipes/cat-quality.yaml)."
    ),
    minutes: float = typer.Option(
        8.0, "--minutes", min=0.01, help="Each candidate's budget: minutes of this machine at its measured speed."
    ),
    candidate: Optional[List[str]] = typer.Option(
        None, "--candidate", help="Only these candidates (repeat; default: all)."
    ),
    n: int = typer.Option(500, "--n", min=2, help="Prior samples scored per candidate (qd eval --n)."),
    jobs: int = typer.Option(
        1, "--jobs", min=1, help="Trainings at once (equal steps: the result does not depend on it)."
    ),
    retime: bool = typer.Option(
        False, "--retime", help="Time the candidates' steps again instead of using the cached figures."
    ),
    time_only: bool = typer.Option(False, "--time-only", help="Time the steps and print the budgets; train nothing."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the figures as JSON here."),
    quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
):
    """The quality frontier: candidate DRAW configurations trained for the same compute
    (minutes of this machine at each one's measured step speed) and scored by qd eval.
    Prints a Markdown table, best Frechet/floor first (docs/quality.md)."""
    from .bench import bench_frontier as bf

    r = _recipe(recipe)
    if out is not None:
        from .atomic import check_target

        check_target(out)  # before hours of training
    result = bf.frontier(
        recipe,
        r.model,
        r.train,
        minutes,
        candidate,
        n=n,
        jobs=jobs,
        retime=retime,
        time_only=time_only,
        say=_reporter(quiet).note,
    )
    if out is not None:
        from .atomic import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
    typer.echo(bf.table(result))


@bench_app.command("data")
def bench_data(
    recipe: Path = typer.Argument(..., help="A recipe naming the dataset (e.g. recipes/zoo-26.yaml)."),
    batches: int = typer.Option(50, "--batches", min=0, help="Training batches to draw after the split."),
    quiet: bool = QuietOpt,
    debug: bool = DebugOpt,
):
    """Memory (peak RSS) and time of loading a recipe's dataset, splitting it and drawing batches."""
    from . import engine
    from .bench.bench_data import bench_data as measure_data

    r = _recipe(recipe)
    typer.echo(json.dumps(measure_data(engine.Run(r, _reporter(quiet, lines=False)), batches)))


def _warn_line(message, category, filename, lineno, file=None, line=None):
    print(_printable(f"Warning: {message}"), file=sys.stderr)


def _printable(line: str) -> str:
    """A line any terminal can take: a name from the input may hold lone surrogates (YAML's
    "\ud800" escapes), which no encoding can write; they are shown escaped instead."""
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


def _stopped_line(signum: int) -> int:
    name = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    typer.echo(f"Error: {name}; checkpoints written so far are kept", err=True)
    return 128 + signum


def _is_listing(args: list) -> bool:
    """`qd plugins [--json] [--debug]`: answered without building the command-line app. Typer
    converts every option of every command when it builds the app (through pydantic in typer
    0.2x: about 70 ms here), and a listing needs none of them."""
    return bool(args) and args[0] == "plugins" and set(args[1:]) <= {"--json", "--debug"}


def _listing(args: list) -> None:
    plugins(as_json="--json" in args, debug="--debug" in args)


def _unexpected(e: Exception) -> int:
    """An exception qd did not expect: the signal's line when one stopped the run mid-way."""
    if interrupt.received:
        return _stopped_line(interrupt.received[0])
    typer.echo(f"Error: unexpected {type(e).__name__}: {e} (run again with --debug for the traceback)", err=True)
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    from .errors import QdError, os_error_line

    try:  # recent typer vendors click; older releases re-export click's exceptions
        from typer.exceptions import TyperException as UsageProblem
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException as UsageProblem

    args = list(sys.argv[1:] if argv is None else argv)
    # TensorFlow's C++ INFO lines are noise to a user; warnings and errors still show. TF 2.21
    # logs a few lines through abseil before abseil is initialised, and those ignore this
    # threshold (abseil-cpp PRs 1718/1957): the oneDNN and XLA notices still appear once.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    debug = "--debug" in args or bool(os.environ.get("QD_DEBUG"))
    warnings.showwarning = _warn_line
    previous = interrupt.install()
    try:
        rv = _listing(args) if _is_listing(args) else app(args=args, prog_name="qd", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except QdError as e:
        if debug:
            raise
        typer.echo(_printable(f"Error: {e}"), err=True)
        code = e.exit_code
    except typer.Exit as e:
        code = e.exit_code
    except UsageProblem as e:
        if debug:
            raise
        typer.echo(f"Error: {e.format_message()} (see `qd --help`)", err=True)
        code = 2
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("Error: interrupted; checkpoints written so far are kept", err=True)
        code = 130
    except interrupt.Stopped as e:
        code = _stopped_line(e.signum)
    except BrokenPipeError:  # `qd plugins | head`: the reader has what it wanted
        # Python flushes stdout again at exit, into the same closed pipe (the docs' recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except OSError as e:  # a full disk or read-only folder outside an atomic write
        if debug:
            raise
        typer.echo(f"Error: {os_error_line(e)}", err=True)
        code = 1
    except Exception as e:  # noqa: BLE001 - the edge: nothing unexplained escapes without --debug
        if debug and not interrupt.received:
            raise
        code = _unexpected(e)
    finally:
        interrupt.restore(previous)
    sys.exit(code)


if __name__ == "__main__":
    main()
