"""Model packs: a trained model as one small file that moves between machines or ships in a
plugin (docs/packs.md).

A pack is a zip archive (`NAME.qdpack`) of exactly two members:
    manifest.json   what the model is: name, categories, model and train settings, steps,
                    the data it saw with counts, held-out bound, recognizer figures, qd's
                    version, and the sha256 and size of weights.npz
    weights.npz     the DRAW weights as named float32 arrays (np.savez: no pickle, no
                    optimizer state, no noise generator)

`qd models import` unpacks one into `<cache>/packs/NAME/` (the same two files); a plugin
registers one with `qd_register_models`. Both are read by the same checks: a damaged,
truncated, foreign, oversized or hostile pack is an InputError (one line, exit 2) and
nothing is written. Reading a manifest needs no TensorFlow (`qd models` stays fast); only
`load` and `import_pack` build the model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from . import __version__, models, params
from .atomic import atomic_path, check_target
from .config import ModelConfig, TrainConfig
from .errors import InputError, QdError, RecipeError

FORMAT = "qd-model-pack"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
MEMBERS = (MANIFEST, WEIGHTS)
SUFFIX = ".qdpack"
FOLDER = "packs"  # under the cache: imported packs
# A pack bigger than this is refused before it is read (the archive, its members as declared,
# and the bytes actually read). The blog's configuration is 3.3 MB of weights (3.5 MB
# conditioned on 26 categories, 6.0 MB on 345); 4096-unit LSTMs would be 781 MB, so the
# limit can be raised for one command.
LIMIT_ENV = "QD_PACK_LIMIT_MB"
DEFAULT_LIMIT_MB = 256
MANIFEST_LIMIT = 1 << 20
# A temporary import folder older than this was left by a killed import.
STALE_SECONDS = 3600
# Matched whole (fullmatch): `$` alone also matches before a final newline ("zoo\n").
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Zip entries carry the Unix mode in the top half of external_attr.
_S_IFLNK = stat.S_IFLNK


def limit_bytes() -> int:
    value = os.environ.get(LIMIT_ENV, "").strip()
    try:
        mb = float(value) if value else DEFAULT_LIMIT_MB
    except ValueError:
        raise InputError(f"{LIMIT_ENV}={value!r} is not a number of megabytes") from None
    return int(mb * (1 << 20))


@dataclass
class Pack:
    """One pack where it lies: an imported folder in the cache, or a plugin's archive."""

    name: str
    path: Path
    manifest: dict
    plugin: Optional[str] = None  # the plugin that registered it; None: imported into the cache

    @property
    def source(self) -> str:
        return f"pack from plugin {self.plugin!r}" if self.plugin else "pack imported into the cache"

    @property
    def label(self) -> str:
        return f"the model pack {self.name!r} ({self.source})"

    @property
    def categories(self) -> list[str]:
        return list(self.manifest["categories"])

    @property
    def conditional(self) -> bool:
        return bool(self.manifest["conditional"])

    @property
    def size(self) -> tuple[int, int]:
        return self.model_config.height, self.model_config.width

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.manifest["model"])

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.manifest["train"])


# -- reading and checking -------------------------------------------------------------------


def _refuse(where, problem: str) -> InputError:
    return InputError(f"{where}: {problem}")


def _read_archive(path: Path, limit: int, only_manifest: bool = False) -> dict[str, bytes]:
    """The members of a pack archive, after every structural check; no file is extracted."""
    try:
        st = path.stat()
    except OSError as e:
        raise _refuse(path, f"cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "is a folder; a model pack is one .qdpack file (qd models export writes one)")
    if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO: read without end, or never answer
        raise _refuse(path, "is not a regular file (a device, a FIFO or a socket); give a .qdpack file")
    size = st.st_size
    if size > limit:
        raise _refuse(
            path,
            f"is {size / 2**20:.3g} MB, above the {limit / 2**20:.3g} MB limit for a model pack "
            f"(set {LIMIT_ENV} to allow more)",
        )
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            _check_members(path, [(i.filename, i.external_attr >> 16, i.file_size, i.is_dir()) for i in infos], limit)
            wanted = (MANIFEST,) if only_manifest else MEMBERS
            out = {}
            for info in infos:
                if info.filename in wanted:
                    cap = MANIFEST_LIMIT if info.filename == MANIFEST else limit
                    with z.open(info) as f:  # zipfile checks each member's CRC-32 as it reads
                        data = f.read(cap + 1)
                    if len(data) > cap or len(data) != info.file_size:
                        raise _refuse(path, f"member {info.filename} is larger than its header says, or too large")
                    out[info.filename] = data
            return out
    except zipfile.BadZipFile as e:
        raise _refuse(
            path, f"is damaged or not a qd model pack ({e}); export it again with `qd models export`"
        ) from None
    except (EOFError, OSError, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as e:
        # A truncated member, an encrypted or unknown compression method.
        raise _refuse(path, f"is damaged or truncated ({type(e).__name__}: {e})") from None


def _check_members(where, members: list[tuple[str, int, int, bool]], limit: int) -> None:
    """Exactly manifest.json and weights.npz, plain files at the top, within the limit."""
    seen = set()
    for name, mode, _size, is_dir in members:
        if name.startswith(("/", "\\")) or ":" in name or "\\" in name or ".." in name.split("/"):
            raise _refuse(where, f"refused: member {name!r} has an absolute or parent-relative path")
        if stat.S_IFMT(mode) == _S_IFLNK:
            raise _refuse(where, f"refused: member {name!r} is a symbolic link")
        if is_dir or name not in MEMBERS:
            raise _refuse(
                where, f"refused: unexpected member {name!r} (a qd model pack holds only {' and '.join(MEMBERS)})"
            )
        if name in seen:
            raise _refuse(where, f"refused: member {name!r} appears twice")
        seen.add(name)
    if MANIFEST not in seen:
        raise _refuse(where, f"is not a qd model pack: it has no {MANIFEST}")
    if sum(m[2] for m in members) > limit:
        raise _refuse(
            where,
            f"unpacks to more than the {limit / 2**20:.3g} MB limit for a model pack (set {LIMIT_ENV} to allow more)",
        )


def _read_folder(path: Path, limit: int, only_manifest: bool = False) -> dict[str, bytes]:
    """An imported pack's two files (links refused, sizes capped)."""
    out = {}
    for name in (MANIFEST,) if only_manifest else MEMBERS:
        file = path / name
        if file.is_symlink() or not file.is_file():
            raise _refuse(
                path,
                f"is damaged: {name} is missing or not a plain file; "
                "import the pack again (qd models import FILE --force)",
            )
        cap = MANIFEST_LIMIT if name == MANIFEST else limit
        with open(file, "rb") as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise _refuse(path, f"{name} is larger than the {cap / 2**20:.3g} MB limit (set {LIMIT_ENV} to allow more)")
        out[name] = data
    return out


def _members(path: Path, only_manifest: bool = False) -> dict[str, bytes]:
    limit = limit_bytes()
    return _read_folder(path, limit, only_manifest) if path.is_dir() else _read_archive(path, limit, only_manifest)


def check_manifest(where, raw: bytes) -> dict:
    """The manifest as a dict, or InputError saying why it is not a pack this qd reads."""
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse(where, f"is not a qd model pack: {MANIFEST} is not JSON (or is nested without end)") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _refuse(where, f"is not a qd model pack: its {MANIFEST} does not say format {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION:
        raise _refuse(
            where,
            f"is a model pack of format version {m.get('format_version')!r}; this qd ({__version__}) "
            f"reads version {FORMAT_VERSION}: use a qd of the version that made it",
        )
    name = m.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _refuse(where, f"its manifest's name {name!r} is not a pack name (letters, digits, '.', '_', '-')")
    cats = m.get("categories")
    if (
        not isinstance(cats, list)
        or not all(isinstance(c, str) for c in cats)
        or not isinstance(m.get("conditional"), bool)
    ):
        raise _refuse(where, "its manifest lacks `categories` (a list of names) or `conditional`")
    if m["conditional"] != (len(cats) > 1):
        raise _refuse(where, "its manifest's `conditional` does not agree with its number of categories")
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        if not isinstance(m.get(section), dict):
            raise _refuse(where, f"its manifest lacks the `{section}` settings")
        # Checked like a recipe's section (types, ranges, defaults for keys it predates); train
        # settings a newer qd added describe how it trained, not the weights, and are dropped.
        given = (
            m[section] if cls is ModelConfig else {k: v for k, v in m[section].items() if k in params.parameters(cls)}
        )
        try:
            m[section] = params.check(cls, given, section)
        except RecipeError as e:
            raise _refuse(where, f"its manifest's {section} settings do not fit this qd ({e})") from None
    steps = m.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise _refuse(where, "its manifest lacks `steps` (a whole number of training steps)")
    if len(set(cats)) != len(cats) or not all(c and len(c) <= 200 for c in cats):
        raise _refuse(where, "its manifest's `categories` are not distinct names")
    for section in ("held_out", "recognizer", "data"):
        if not isinstance(m.get(section), (dict, type(None))):
            raise _refuse(where, f"its manifest's `{section}` is not a record")
    bound = (m.get("held_out") or {}).get("bound")
    if bound is not None and not _finite_number(bound):
        raise _refuse(where, "its manifest's held-out `bound` is not a finite number")
    if not isinstance(m.get("description", ""), str):
        raise _refuse(where, "its manifest's `description` is not text")
    weights = (m.get("files") or {}).get(WEIGHTS) if isinstance(m.get("files"), dict) else None
    if (
        not isinstance(weights, dict)
        or not isinstance(weights.get("sha256"), str)
        or not isinstance(weights.get("bytes"), int)
    ):
        raise _refuse(where, f"its manifest lacks the sha256 and size of {WEIGHTS}")
    return m


def read(path: Path, registered_as: Optional[str] = None, plugin: Optional[str] = None, *, verify: bool = True):
    """The pack at `path` (archive or imported folder): manifest checked, and with `verify`
    the weights' sha256 too. Returns (Pack, weights bytes or None)."""
    path = Path(path)
    members = _members(path, only_manifest=not verify)
    m = check_manifest(path, members[MANIFEST])
    if registered_as is not None and m["name"] != registered_as:
        who = f"plugin {plugin!r}" if plugin else "the cache"
        raise _refuse(path, f"{who} offers it as {registered_as!r} but its manifest names {m['name']!r}")
    weights = None
    if verify:
        if WEIGHTS not in members:
            raise _refuse(path, f"is not a whole qd model pack: it has no {WEIGHTS}")
        weights = members[WEIGHTS]
        expect = m["files"][WEIGHTS]
        if len(weights) != expect["bytes"] or hashlib.sha256(weights).hexdigest() != expect["sha256"]:
            raise _refuse(
                path,
                f"{WEIGHTS} does not match the sha256 in its manifest: the pack is damaged; copy or export it again",
            )
    return Pack(m["name"], path, m, plugin), weights


def arrays(where, weights: bytes) -> dict[str, np.ndarray]:
    """weights.npz as named float32 arrays; pickled objects and oversized members refused."""
    limit = limit_bytes()
    try:
        with np.load(io.BytesIO(weights), allow_pickle=False) as z:
            if sum(i.file_size for i in z.zip.infolist()) > limit:
                raise _refuse(where, f"{WEIGHTS} unpacks to more than the {limit / 2**20:.3g} MB limit")
            odd = [i.filename for i in z.zip.infolist() if not i.filename.endswith(".npy") or i.is_dir()]
            if odd:
                raise _refuse(where, f"{WEIGHTS} holds {odd[0]!r}, not a .npy array")
            out = {k: z[k] for k in z.files}
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, BadZipFile, EOFError, ... for bad bytes
        raise _refuse(where, f"{WEIGHTS} is not a readable array file ({type(e).__name__}: {e})") from None
    for k, v in out.items():
        if not isinstance(v, np.ndarray):  # numpy hands back a member without the .npy magic as bytes
            raise _refuse(where, f"{WEIGHTS}: member {k!r} is not a readable array file")
        if v.dtype != np.float32:
            raise _refuse(where, f"{WEIGHTS}: array {k!r} is {v.dtype}, not float32")
        if not np.all(np.isfinite(v)):
            raise _refuse(where, f"{WEIGHTS}: array {k!r} holds NaN or infinite values; the model would draw nothing")
    return out


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def shapes(cfg: ModelConfig, classes: int) -> dict[str, tuple]:
    """Every weight's shape for a model configuration, without building it (draw.Draw's
    `_make_weights` and conditioning's tables): a manifest's model is compared with the
    weights before anything of its size is allocated."""
    if cfg.attention:
        read, write, windows = 2 * cfg.read_n**2, cfg.write_n**2, 10
    else:
        read, write, windows = 2 * cfg.height * cfg.width, cfg.height * cfg.width, 0
    out = {
        "enc_kernel": (read + cfg.dec_size + cfg.enc_size, 4 * cfg.enc_size),
        "enc_bias": (4 * cfg.enc_size,),
        "z_kernel": (cfg.enc_size, 2 * cfg.z_size),
        "z_bias": (2 * cfg.z_size,),
        "dec_kernel": (cfg.z_size + cfg.dec_size, 4 * cfg.dec_size),
        "dec_bias": (4 * cfg.dec_size,),
        "out_kernel": (cfg.dec_size, write + windows),
        "out_bias": (write + windows,),
    }
    if classes > 1:
        out.update(enc_table=(classes, 4 * cfg.enc_size), dec_table=(classes, 4 * cfg.dec_size))
    return out


def check_weights(pack: Pack, given: dict[str, np.ndarray]) -> None:
    """The arrays are exactly the manifest's model's weights, named and shaped (InputError)."""
    wanted = shapes(pack.model_config, len(pack.categories) if pack.conditional else 1)
    if set(given) != set(wanted):
        missing, extra = sorted(set(wanted) - set(given)), sorted(set(given) - set(wanted))
        raise _refuse(
            pack.path,
            f"{WEIGHTS} does not fit its manifest's model (missing {missing or 'none'}, unexpected {extra or 'none'})",
        )
    for name, shape in wanted.items():
        if tuple(given[name].shape) != shape:
            raise _refuse(
                pack.path,
                f"{WEIGHTS}: {name} is shaped {tuple(given[name].shape)}, the manifest's model needs {shape}",
            )


# -- where packs are ------------------------------------------------------------------------


def imported_root(cache_dir: Path) -> Path:
    return Path(cache_dir) / FOLDER


def imported(cache_dir: Path, name: str) -> Optional[Path]:
    """The imported pack folder of `name`, if there is one."""
    if not NAME.fullmatch(name):
        return None
    folder = imported_root(cache_dir) / name
    # A link there is not a pack qd imported: following it could read anything on the disk.
    return folder if folder.is_dir() and not folder.is_symlink() else None


def find(cache_dir: Path, name: str, installed=None) -> Optional[Pack]:
    """`name` imported into the cache, else the installed pack `installed` (a registry Entry)."""
    folder = imported(cache_dir, name)
    if folder is not None:
        return read(folder, name, verify=False)[0]
    if installed is not None:
        return read(Path(installed.factory), name, installed.plugin, verify=False)[0]
    return None


def listing(cache_dir: Path, installed: dict) -> list[dict]:
    """`qd models` rows of the imported packs, then the installed ones (`installed`: name -> Entry)."""
    rows = []
    root = imported_root(cache_dir)
    folders = (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and NAME.fullmatch(p.name))
        if root.is_dir() and not root.is_symlink()
        else []
    )
    for where, name, plugin in [(p, p.name, None) for p in folders] + [
        (Path(e.factory), n, e.plugin) for n, e in sorted(installed.items())
    ]:
        try:
            rows.append(_row(read(where, name, plugin, verify=False)[0]))
        except QdError as e:
            rows.append(
                {
                    "name": name,
                    "key": None,
                    "categories": None,
                    "steps": None,
                    "status": "damaged",
                    "bound": None,
                    "size_bytes": _size(where),
                    "path": str(where),
                    "source": _source(plugin),
                    "plugin": plugin,
                    "error": str(e),
                }
            )
    return rows


def _source(plugin: Optional[str]) -> str:
    return "plugin" if plugin else "imported"


def _size(path: Path) -> int:
    path = Path(path)
    try:
        return models._size(path) if path.is_dir() else path.stat().st_size  # never follows a link
    except OSError:
        return 0


def _row(pack: Pack) -> dict:
    m = pack.manifest
    held = m.get("held_out") if isinstance(m.get("held_out"), dict) else {}
    return {
        "name": pack.name,
        "key": None,
        "categories": pack.categories if pack.conditional else (pack.categories[:1] or None),
        "steps": m["steps"],
        "status": "finished",
        "bound": held.get("bound"),
        "size_bytes": _size(pack.path),
        "path": str(pack.path),
        "source": _source(pack.plugin),
        "plugin": pack.plugin,
    }


# -- building the model ---------------------------------------------------------------------


def _variables(model) -> dict:
    return {v.name.split(":")[0]: v for v in model.weights}


def build(pack: Pack, weights: bytes):
    """The DRAW model the pack describes, holding its weights. Every array is checked against
    the manifest's model (check_weights) before the model is built, so a small pack whose
    manifest declares a huge model allocates nothing."""
    from .draw import Draw

    given = arrays(pack.path, weights)
    check_weights(pack, given)
    model = Draw(pack.model_config, classes=pack.categories if pack.conditional else None)
    for name, var in _variables(model).items():
        var.assign(given[name])
    return model


def load(pack: Pack):
    """The pack as a qdcore.training.train.TrainedModel (weights verified against the manifest)."""
    from .training.train import TrainedModel

    checked, weights = read(pack.path, pack.name, pack.plugin)
    return TrainedModel(
        model=build(checked, weights),
        step=checked.manifest["steps"],
        last_batch=None,
        workdir=checked.path,
        pack=checked.manifest,
    )


# -- making one -----------------------------------------------------------------------------


def weights_bytes(model) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.numpy().astype(np.float32) for k, v in _variables(model).items()})
    return buf.getvalue()


def manifest_of_cached(workdir: Path, name: str, weights: bytes) -> dict:
    """The manifest of a model trained into the cache, from what training left beside it."""
    workdir = Path(workdir)
    finished = json.loads((workdir / models.FINISHED).read_text(encoding="utf-8"))
    recipe = models._json(workdir / "recipe.json") or {}
    evaluation = models._json(workdir / models.EVALUATION) or {}
    from .recognizer import categories_of

    classes = finished.get("classes")
    dataset = recipe.get("dataset")
    held_keys = ("bound", "lx", "lz", "n_images", "targets", "per_category")
    rec_keys = ("recognizer", "recognizer_accuracy", "best_of", "recognized", "frechet", "frechet_floor")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": f"exported from the cache entry {workdir.name}",
        "categories": classes or categories_of((dataset or {}) if isinstance(dataset, dict) else {}),
        "conditional": bool(classes),
        "model": finished["model"],
        "train": finished["train"],
        "steps": finished["step"],
        "data": {
            "dataset": dataset if dataset is not None else finished.get("dataset"),
            **(finished.get("data") or {}),
        },
        "held_out": {k: evaluation[k] for k in held_keys if k in evaluation} or None,
        "recognizer": {k: evaluation[k] for k in rec_keys if k in evaluation} or None,
        "qd_version": __version__,
        "files": {WEIGHTS: {"sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights)}},
    }


def write(path: Path, manifest: dict, weights: bytes) -> Path:
    """The pack archive, written atomically (fixed timestamps: the same model, the same bytes)."""
    path = check_target(path, str(Path(path) / (manifest["name"] + SUFFIX)))
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    _importable(path, raw, weights)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name, data in ((MANIFEST, raw), (WEIGHTS, weights)):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                z.writestr(info, data)
    return path


def _importable(path: Path, raw: bytes, weights: bytes) -> None:
    """Export writes only what import reads: the same checks, on the bytes about to be written."""
    try:
        if len(raw) > MANIFEST_LIMIT or len(raw) + len(weights) > limit_bytes():
            raise _refuse(path, f"would be over the limits of a model pack (set {LIMIT_ENV} to allow more)")
        m = check_manifest(path, raw)
        expect = m["files"][WEIGHTS]
        if len(weights) != expect["bytes"] or hashlib.sha256(weights).hexdigest() != expect["sha256"]:
            raise _refuse(path, f"{WEIGHTS} does not match the sha256 in its manifest")
        check_weights(Pack(m["name"], path, m), arrays(path, weights))
    except InputError as e:
        raise InputError(f"not exported: `qd models import` would refuse it: {e}") from None


# -- import ---------------------------------------------------------------------------------


def import_pack(file: Path, cache_dir: Path, force: bool = False) -> Pack:
    """Check the archive whole (members, manifest, checksum, weights against the model) before
    the cache is touched; then unpack into a temporary folder inside the cache, check that
    copy again, and rename it into place. A refusal leaves the cache as it was."""
    file = Path(file)
    if not file.exists():
        raise InputError(f"{file}: no such file")
    pack, weights = read(file)
    check_weights(pack, arrays(pack.path, weights))  # they fit the manifest's model (nothing built)
    _refuse_existing(imported_root(cache_dir) / pack.name, force)  # before the lock: a refusal writes nothing
    from .training.locks import hold

    # One import at a time: two of one name without --force could otherwise both find it absent.
    with hold(Path(cache_dir) / ".packs-import.lock", "importing a model pack"):
        return _install(pack, weights, cache_dir, force)


def _refuse_existing(target: Path, force: bool) -> None:
    if (target.exists() or target.is_symlink()) and not force:
        raise InputError(f"a model named {target.name!r} is already imported ({target}); add --force to replace it")


def _install(pack: Pack, weights: bytes, cache_dir: Path, force: bool) -> Pack:
    root = imported_root(cache_dir)
    target = root / pack.name
    _refuse_existing(target, force)  # again, under the lock: another import may have made it meanwhile
    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    temp = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    old = None
    try:
        (temp / MANIFEST).write_bytes(json.dumps(pack.manifest, indent=1, sort_keys=True).encode())
        (temp / WEIGHTS).write_bytes(weights)
        read(temp, pack.name)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=root))
            os.replace(target, old / pack.name)
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        if old is not None and not target.exists():
            os.replace(old / pack.name, target)
        if made_root and not any(root.iterdir()):
            root.rmdir()
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return read(target, pack.name, verify=False)[0]


def _sweep(root: Path, age: float = STALE_SECONDS) -> None:
    """Remove the temporary folders a killed import left (hidden, so never listed); a recent
    one may be another import at work and is kept."""
    import time

    for folder in list(root.glob(".import-*")) + list(root.glob(".replaced-*")):
        try:
            if time.time() - folder.stat().st_mtime > age:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


# -- export ---------------------------------------------------------------------------------


def _cached(cache_dir: Path, name: str) -> Optional[Path]:
    """The finished model trained into the cache that `name` names (its name, or folder name)."""
    found = [
        Path(r["path"])
        for r in models.listing(cache_dir)
        if r["status"] == "finished" and name in (r["name"], Path(r["path"]).name)
    ]
    if len(found) > 1:
        raise InputError(
            f"{len(found)} cached models are named {name!r}: name one of "
            f"{', '.join(p.name for p in found)} (`qd models` lists them)"
        )
    return found[0] if found else None


def export(
    name: str,
    file: Path,
    cache_dir: Path,
    installed: dict,
    *,
    description: Optional[str] = None,
    figures: Optional[Path] = None,
) -> Pack:
    """Write the model `name` as a pack archive at `file`: a model trained into the cache
    (by name, or by folder name when several share one), else an imported or installed pack.
    `description` and `figures` (a JSON file: recognizer figures measured by whoever made the
    model, e.g. per category) replace the manifest's."""
    check_target(file, str(Path(file) / (name + SUFFIX)))  # before any model is read
    extra = _figures(figures) if figures is not None else None
    from .errors import UnknownNameError

    workdir = _cached(cache_dir, name)
    if workdir is not None:
        from .training.train import load as load_trained

        pack_name = workdir.name.rsplit("-", 1)[0] if name == workdir.name else name
        if not NAME.fullmatch(pack_name):
            raise InputError(f"{pack_name!r} is not a pack name (letters, digits, '.', '_', '-')")
        finished = json.loads((workdir / models.FINISHED).read_text(encoding="utf-8"))
        trained = load_trained(ModelConfig(**finished["model"]), workdir)
        weights = weights_bytes(trained.model)
        manifest = manifest_of_cached(workdir, pack_name, weights)
    else:
        found = find(cache_dir, name, installed.get(name))
        if found is None:
            names = sorted(
                {r["name"] for r in models.listing(cache_dir)}
                | set(installed)
                | {p.name for p in imported_root(cache_dir).glob("*") if p.is_dir()}
            )
            raise UnknownNameError(
                f"no model named {name!r} in the cache or the installed packs. "
                f"Available: {', '.join(names) or '(none)'}"
            )
        checked, weights = read(found.path, found.name, found.plugin)
        manifest = checked.manifest
    if description is not None:
        manifest["description"] = description
    if extra is not None:
        manifest["recognizer"] = extra
    write(file, manifest, weights)
    return Pack(manifest["name"], Path(file), manifest)


def _figures(path: Path) -> dict:
    try:
        raw = Path(path).read_bytes()[: MANIFEST_LIMIT + 1]
        value = json.loads(raw.decode("utf-8")) if len(raw) <= MANIFEST_LIMIT else None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: cannot read it as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: the figures must be one JSON object of at most 1 MB, for example qd eval's output")
    return value
