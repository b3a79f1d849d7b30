"""Model packs: a trained model as one small file that moves between machines or ships in a
plugin (docs/packs.md).

Format 2 (what `qd models export` writes, `NAME.safetensors`) is one safetensors file: the
DRAW weights as named float32 tensors, and the manifest as the text of the header's
`__metadata__` key `qd_manifest`. Format 1 (`NAME.qdpack`, still read and, by that suffix,
written) is a zip archive of exactly two members:
    manifest.json   what the model is: name, categories, model and train settings, steps,
                    the data it saw with counts, held-out bound, recognizer figures, qd's
                    version, and the sha256 and size of the weights
    weights.npz     the DRAW weights as named float32 arrays (np.savez: no pickle, no
                    optimizer state, no noise generator)

`qd models import` copies one into `<cache>/packs/NAME/` (format 2: `model.safetensors`;
format 1: its two members); a plugin registers one with `qd_register_models`. Both are read
by the same checks: a damaged, truncated, foreign, oversized or hostile pack is an InputError
(one line, exit 2) and nothing is written. A safetensors header is checked here, field by
field, before the safetensors library sees any byte of the file. Reading a manifest needs no
TensorFlow (`qd models` stays fast); only `load` and `import_pack` build the model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import __version__, limits, models, params, paths
from .atomic import atomic_path, check_target
from .config import ModelConfig, TrainConfig
from .errors import InputError, QdError, RecipeError

FORMAT = "qd-model-pack"
FORMAT_VERSION = 2  # what a new export writes unless its file ends in .qdpack
VERSIONS = (1, 2)
FOLDER = "packs"  # under the cache: imported packs
# Format 1: a zip archive of two members.
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
MEMBERS = (MANIFEST, WEIGHTS)
SUFFIX_V1 = ".qdpack"
# Format 2: one safetensors file.
SUFFIX = ".safetensors"
META_KEY = "qd_manifest"  # the header's __metadata__ key holding the manifest's JSON text
TENSORS = "tensors"  # the manifest's `files` entry: sha256 and size of the file's data section
IMPORTED = "model.safetensors"  # an imported format-2 pack's one file, in its folder
# The manifest (at most 1 MB) is most of a header: escaping it as a JSON string inside JSON
# can double it, and ten tensor entries add a few hundred bytes. The safetensors library
# itself would parse up to 100 MB of header before anything else was checked.
HEADER_LIMIT = 4 << 20
# The card `qd models export` writes beside a pack: FILE's stem + this.
CARD_SUFFIX = ".README.md"
# A pack bigger than this is refused before it is read (the file, a zip's members as
# declared, and the bytes actually read). The blog's configuration is 3.3 MB of weights
# (3.5 MB conditioned on 26 categories, 6.0 MB on 345); 4096-unit LSTMs would be 781 MB, so
# the limit can be raised for one command.
LIMIT_ENV = "QD_PACK_LIMIT_MB"
DEFAULT_LIMIT_MB = 256
MANIFEST_LIMIT = 1 << 20
# A temporary import folder older than this was left by a killed import.
STALE_SECONDS = 3600
NAME = paths.PACK_NAME  # matched whole (fullmatch)
# Zip entries carry the Unix mode in the top half of external_attr.
_S_IFLNK = stat.S_IFLNK
_ZIP_MAGIC = b"PK"


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

    @property
    def version(self) -> int:
        return self.manifest["format_version"]

    @property
    def sha256(self) -> str:
        """The weights' checksum (format 1: of weights.npz; format 2: of the data section)."""
        return self.manifest["files"][_DIGESTED[self.version]]["sha256"]


@dataclass(frozen=True)
class Weights:
    """A pack's weights as its file holds them, checksum verified: format 1's weights.npz, or
    format 2's whole safetensors file (what the safetensors library reads)."""

    version: int
    raw: bytes

    def arrays(self, where) -> dict[str, np.ndarray]:
        return _npz_arrays(where, self.raw) if self.version == 1 else _tensor_arrays(where, self.raw)


# What each format's manifest checksums, as named in its `files` and in messages.
_DIGESTED = {1: WEIGHTS, 2: TENSORS}
_WHAT = {1: WEIGHTS, 2: "its tensor data"}


# -- reading and checking -------------------------------------------------------------------


def _refuse(where, problem: str) -> InputError:
    return InputError(f"{where}: {problem}")


def _shown(value, width: int = 60) -> str:
    """A value from the file, for one error line: repr (no newline gets through), cut short."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass
class _Read:
    """What a pack's file holds, structurally checked; nothing interpreted yet."""

    version: int
    manifest: bytes
    payload: Optional[bytes] = None  # format 1: weights.npz; format 2: the whole file
    shapes: Optional[dict] = None  # format 2: each tensor's shape, from the header
    data_start: int = 0  # format 2: where the data section begins


def _read_file(path: Path, limit: int, only_manifest: bool) -> _Read:
    """A pack file of either format: format 1 if it starts as a zip archive does, else 2."""
    try:
        st = path.stat()
    except OSError as e:
        raise _refuse(path, f"cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "is a folder; a model pack is one .safetensors file (qd models export writes one)")
    if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO: read without end, or never answer
        raise _refuse(path, "is not a regular file (a device, a FIFO or a socket); give a .safetensors file")
    size = st.st_size
    if size > limit:
        raise _refuse(
            path,
            f"is {size / 2**20:.3g} MB, above the {limit / 2**20:.3g} MB limit for a model pack "
            f"(set {LIMIT_ENV} to allow more)",
        )
    try:
        with open(path, "rb") as f:
            return _read_stream(path, f, size, limit, only_manifest)
    except OSError as e:
        raise _refuse(path, f"cannot read it ({e.strerror or e})") from None


def _read_stream(where, f, size: int, limit: int, only_manifest: bool) -> _Read:
    magic = f.read(len(_ZIP_MAGIC))
    f.seek(0)
    if magic == _ZIP_MAGIC:
        members = _read_archive(where, f, only_manifest, limit)
        return _Read(1, members[MANIFEST], members.get(WEIGHTS))
    return _read_safetensors(where, f, size, limit, only_manifest)


def _read_archive(where, f, only_manifest: bool, limit: int) -> dict[str, bytes]:
    """The members of a format-1 archive, after every structural check; no file is extracted."""
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            _check_members(where, [(i.filename, i.external_attr >> 16, i.file_size, i.is_dir()) for i in infos], limit)
            wanted = (MANIFEST,) if only_manifest else MEMBERS
            out = {}
            for info in infos:
                if info.filename in wanted:
                    cap = MANIFEST_LIMIT if info.filename == MANIFEST else limit
                    with z.open(info) as member:  # zipfile checks each member's CRC-32 as it reads
                        data = member.read(cap + 1)
                    if len(data) > cap or len(data) != info.file_size:
                        raise _refuse(where, f"member {info.filename} is larger than its header says, or too large")
                    out[info.filename] = data
            if not only_manifest and WEIGHTS not in out:
                raise _refuse(where, f"is not a whole qd model pack: it has no {WEIGHTS}")
            return out
    except zipfile.BadZipFile as e:
        raise _refuse(
            where, f"is damaged or not a qd model pack ({e}); export it again with `qd models export`"
        ) from None
    except (EOFError, OSError, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as e:
        # A truncated member, an encrypted or unknown compression method.
        raise _refuse(where, f"is damaged or truncated ({type(e).__name__}: {e})") from None


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


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_safetensors(where, f, size: int, limit: int, only_manifest: bool) -> _Read:
    """A format-2 file: every field of the header checked before the safetensors library sees
    the file (it parses up to 100 MB of header, keeps one of two entries of a name without a
    word, and returns tensors of any dtype in any order). Tensors must be float32 and follow
    one another in name order from the data section's first byte to its last, no gap, no
    overlap (the layout safetensors writes): then the data section is exactly the tensors'
    bytes in a canonical order, and its sha256 (checked later) names the weights."""
    n, raw, payload = _header_bytes(where, f, size, limit, only_manifest)
    header = _header_json(where, raw)
    manifest = _metadata_manifest(where, header.pop("__metadata__", None))
    shapes, spans = _tensor_spans(where, header, size - 8 - n)
    return _Read(2, manifest, payload, shapes, 8 + n)


def _header_bytes(where, f, size: int, limit: int, only_manifest: bool) -> tuple[int, bytes, Optional[bytes]]:
    """(header length, header bytes, the whole file or None when only the manifest is read)."""
    head = f.read(8)
    if len(head) < 8:
        raise _refuse(
            where, "is not a qd model pack: neither a .qdpack archive nor a .safetensors file (under 8 bytes)"
        )
    n = int.from_bytes(head, "little")
    if n > size - 8:
        raise _refuse(
            where,
            f"is not a qd model pack, or is cut short: read as a .safetensors file, its first 8 bytes give a "
            f"header of {n:,} bytes, past the end of the file ({size:,} bytes)",
        )
    if n > HEADER_LIMIT:
        raise _refuse(
            where,
            f"refused: its safetensors header is {n:,} bytes, above the {HEADER_LIMIT / 2**20:.3g} MB "
            "a model pack's header may have",
        )
    payload = None
    if only_manifest:
        raw = f.read(n)
    else:
        # The whole file in memory before its header is parsed: the bytes checked here are the
        # bytes the library reads, even if the file is replaced meanwhile.
        f.seek(0)
        payload = f.read(limit + 1)
        if len(payload) != size or payload[:8] != head:
            raise _refuse(where, "is damaged: it changed or ended while it was read")
        raw = payload[8 : 8 + n]
    if len(raw) != n:
        raise _refuse(where, "is damaged: it changed or ended while it was read")
    return n, raw, payload


def _header_json(where, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=limits.unique_keys)
    except limits.DuplicateKey as e:  # json keeps the last of two entries of one tensor
        raise _refuse(where, f"refused: its safetensors header names {_shown(e.key)} twice") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse(where, "is not a qd model pack: its safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise _refuse(where, "is not a qd model pack: its safetensors header is not a JSON object")
    return header


def _metadata_manifest(where, meta) -> bytes:
    """The manifest's bytes from the header's __metadata__, which holds that one text."""
    if not isinstance(meta, dict) or META_KEY not in meta:
        raise _refuse(
            where,
            f"is a .safetensors file but not a qd model pack: its header's __metadata__ has no {META_KEY} "
            "(export it with `qd models export`)",
        )
    for key, value in meta.items():
        if not isinstance(value, str):
            raise _refuse(
                where, f"refused: its __metadata__'s {_shown(key)} is not text (safetensors metadata is text)"
            )
        if key != META_KEY:
            raise _refuse(
                where, f"refused: its __metadata__ holds {_shown(key)}; a qd model pack's holds only {META_KEY}"
            )
    manifest = meta[META_KEY].encode("utf-8", "surrogatepass")  # a lone surrogate fails as JSON later
    if len(manifest) > MANIFEST_LIMIT:
        raise _refuse(where, f"its manifest is above the {MANIFEST_LIMIT / 2**20:.3g} MB a manifest may have")
    return manifest


def _tensor_spans(where, header: dict, data_len: int) -> tuple[dict, dict]:
    """({name: shape}, {name: (begin, end)}) of the header's tensors: float32, each spanning
    what its shape needs, one after another in name order over the whole data section."""
    shapes, spans = {}, {}
    for name, entry in header.items():
        shapes[name], spans[name] = _tensor_entry(where, name, entry, data_len)
    at = 0
    for name in sorted(spans):  # code point order: the order safetensors writes tensors of one dtype
        begin, end = spans[name]
        if begin != at:
            raise _refuse(
                where,
                f"refused: tensor {_shown(name)} starts at byte {begin:,} of the data, not {at:,}: tensors must follow "
                "one another in name order with no gap and no overlap",
            )
        at = end
    if at != data_len:
        raise _refuse(where, f"refused: its data section has {data_len - at:,} bytes after the last tensor")
    return shapes, spans


def _tensor_entry(where, name: str, entry, data_len: int) -> tuple[tuple, tuple[int, int]]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _refuse(where, f"refused: header entry {_shown(name)} is not a tensor (dtype, shape, data_offsets)")
    if entry["dtype"] != "F32":
        raise _refuse(where, f"tensor {_shown(name)} is {_shown(entry['dtype'])}, not F32 (float32)")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_whole(d) for d in shape):
        raise _refuse(where, f"tensor {_shown(name)}'s shape {_shown(shape)} is not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(o) for o in offsets):
        raise _refuse(where, f"tensor {_shown(name)}'s data_offsets {_shown(offsets)} are not two byte offsets")
    begin, end = offsets
    if end > data_len or begin > end:
        raise _refuse(
            where,
            f"tensor {_shown(name)}'s data_offsets {_shown(offsets)} are out of the data section's "
            f"{data_len:,} bytes: the file is cut short or damaged",
        )
    need = 4 * math.prod(shape)
    if end - begin != need:
        raise _refuse(
            where, f"tensor {_shown(name)} spans {end - begin:,} bytes; its shape {_shown(shape)} needs {need:,}"
        )
    return tuple(shape), (begin, end)


def _read_folder(path: Path, limit: int, only_manifest: bool = False) -> _Read:
    """An imported pack: `model.safetensors` (format 2) or the two members of format 1 (links
    refused, sizes capped)."""
    single = path / IMPORTED
    if single.is_symlink() or single.exists():
        if single.is_symlink() or not single.is_file():
            raise _refuse(path, f"is damaged: {IMPORTED} is not a plain file; import the pack again (--force)")
        return _read_file(single, limit, only_manifest)
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
    return _Read(1, out[MANIFEST], out.get(WEIGHTS))


def _contents(path: Path, only_manifest: bool = False) -> _Read:
    limit = limit_bytes()
    return _read_folder(path, limit, only_manifest) if path.is_dir() else _read_file(path, limit, only_manifest)


def check_manifest(where, raw: bytes, version: int = 1) -> dict:
    """The manifest as a dict, or InputError saying why it is not a pack this qd reads.
    `version` is the format of the file it came from, which the manifest must say too. Keys
    this qd does not know are kept as they are (a newer qd may add some)."""
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse(where, "is not a qd model pack: its manifest is not JSON (or is nested without end)") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _refuse(where, f"is not a qd model pack: its manifest does not say format {FORMAT!r}")
    said = m.get("format_version")
    if not isinstance(said, int) or isinstance(said, bool) or said not in VERSIONS:
        raise _refuse(
            where,
            f"is a model pack of format version {_shown(said)}; this qd ({__version__}) reads versions "
            f"{' and '.join(map(str, VERSIONS))}: use a qd of the version that made it",
        )
    if said != version:
        kind = "a .qdpack zip archive" if version == 1 else "a .safetensors file"
        raise _refuse(
            where, f"is damaged: its manifest says format version {said}, but it is {kind} (format {version})"
        )
    name = m.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _refuse(where, f"its manifest's name {_shown(name)} is not a pack name (letters, digits, '.', '_', '-')")
    cats = m.get("categories")
    if (
        not isinstance(cats, list)
        or not all(isinstance(c, str) for c in cats)
        or not isinstance(m.get("conditional"), bool)
    ):
        raise _refuse(where, "its manifest lacks `categories` (a list of names) or `conditional`")
    if m["conditional"] != (len(cats) > 1):
        raise _refuse(where, "its manifest's `conditional` does not agree with its number of categories")
    _check_settings(where, m)
    _check_records(where, m, version)
    return m


def _check_settings(where, m: dict) -> None:
    """The manifest's model and train sections, checked like a recipe's (in place)."""
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


def _check_records(where, m: dict, version: int) -> None:
    """The manifest's steps, figures, description and the checksum entry of its weights."""
    cats = m["categories"]
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
    digested = _DIGESTED[version]
    entry = (m.get("files") or {}).get(digested) if isinstance(m.get("files"), dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not _whole(entry.get("bytes")):
        raise _refuse(where, f"its manifest lacks `files.{digested}`: the sha256 and size of {_WHAT[version]}")


def read(path: Path, registered_as: Optional[str] = None, plugin: Optional[str] = None, *, verify: bool = True):
    """The pack at `path` (a file of either format, or an imported folder): manifest checked,
    a format-2 header's tensor names and shapes against it, and with `verify` the weights'
    sha256 too. Returns (Pack, Weights or None)."""
    path = Path(path)
    return _checked(path, _contents(path, only_manifest=not verify), registered_as, plugin)


def _checked(path: Path, got: _Read, registered_as=None, plugin=None) -> tuple[Pack, Optional[Weights]]:
    m = check_manifest(path, got.manifest, got.version)
    if registered_as is not None and m["name"] != registered_as:
        who = f"plugin {plugin!r}" if plugin else "the cache"
        raise _refuse(path, f"{who} offers it as {registered_as!r} but its manifest names {m['name']!r}")
    pack = Pack(m["name"], path, m, plugin)
    if got.shapes is not None:  # format 2: known from the header, before any data is read
        check_shapes(pack, got.shapes)
    if got.payload is None:
        return pack, None
    expect = m["files"][_DIGESTED[got.version]]
    digested = memoryview(got.payload)[got.data_start :]
    if len(digested) != expect["bytes"] or hashlib.sha256(digested).hexdigest() != expect["sha256"]:
        raise _refuse(
            path,
            f"{_WHAT[got.version]} does not match the sha256 in its manifest: the pack is damaged; "
            "copy or export it again",
        )
    return pack, Weights(got.version, got.payload)


def _npz_arrays(where, weights: bytes) -> dict[str, np.ndarray]:
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
    return _finite(where, out, f"{WEIGHTS}: array")


def _tensor_arrays(where, blob: bytes) -> dict[str, np.ndarray]:
    """A format-2 file's tensors, read by the safetensors library (after _read_safetensors
    checked every field of its header)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as load_tensors

    try:
        out = load_tensors(blob)
    except (SafetensorError, ValueError, KeyError, TypeError) as e:
        shown = str(e).splitlines()[0] if str(e) else ""
        raise _refuse(where, f"the safetensors library cannot read it ({type(e).__name__}: {shown[:200]})") from None
    return _finite(where, out, "tensor")


def _finite(where, out: dict, what: str) -> dict[str, np.ndarray]:
    for k, v in out.items():
        if v.dtype != np.float32:
            raise _refuse(where, f"{what} {_shown(k)} is {v.dtype}, not float32")
        if not np.all(np.isfinite(v)):
            raise _refuse(where, f"{what} {_shown(k)} holds NaN or infinite values; the model would draw nothing")
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


def check_shapes(pack: Pack, given: dict[str, tuple]) -> None:
    """The weights are exactly the manifest's model's, by name and shape (InputError): for
    format 2 from the header alone, before any tensor is read."""
    what = _WHAT[pack.version]
    wanted = shapes(pack.model_config, len(pack.categories) if pack.conditional else 1)
    if set(given) != set(wanted):
        missing, extra = sorted(set(wanted) - set(given)), sorted(set(given) - set(wanted))
        raise _refuse(
            pack.path,
            f"{what} does not fit its manifest's model (missing {', '.join(missing) or 'none'}, "
            f"unexpected {', '.join(_shown(e, 40) for e in extra[:3]) or 'none'})",
        )
    for name, shape in wanted.items():
        if tuple(given[name]) != shape:
            raise _refuse(
                pack.path,
                f"{what}: {name} is shaped {_shown(tuple(given[name]))}, the manifest's model needs {shape}",
            )


def check_weights(pack: Pack, given: dict[str, np.ndarray]) -> None:
    """The arrays are exactly the manifest's model's weights, named and shaped (InputError)."""
    check_shapes(pack, {k: v.shape for k, v in given.items()})


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


def trained_steps(manifest: dict) -> int:
    """The steps that made the weights: a relay's every leg, not its last leg's `steps` alone
    (what `qd models`, `model: step N` and the studio say)."""
    from .cards import relay_totals

    return (relay_totals(manifest) or (manifest["steps"],))[0]


def _row(pack: Pack) -> dict:
    m = pack.manifest
    held = m.get("held_out") if isinstance(m.get("held_out"), dict) else {}
    return {
        "name": pack.name,
        "key": None,
        "categories": pack.categories if pack.conditional else (pack.categories[:1] or None),
        "steps": trained_steps(m),
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


def build(pack: Pack, weights: Weights):
    """The DRAW model the pack describes, holding its weights. Every array is checked against
    the manifest's model (check_weights) before the model is built, so a small pack whose
    manifest declares a huge model allocates nothing."""
    from .draw import Draw

    given = weights.arrays(pack.path)
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
        step=trained_steps(checked.manifest),
        last_batch=None,
        workdir=checked.path,
        pack=checked.manifest,
    )


# -- making one -----------------------------------------------------------------------------


def model_arrays(model) -> dict[str, np.ndarray]:
    return {k: v.numpy().astype(np.float32) for k, v in _variables(model).items()}


def legs(manifest: dict) -> list[dict]:
    """The training legs that made a pack's weights, oldest first: its manifest's `legs`, or
    for a pack from before legs were recorded, one leg from what its manifest says."""
    got = manifest.get("legs")
    if isinstance(got, list) and got:
        return got
    steps, batch = manifest.get("steps"), (manifest.get("train") or {}).get("batch_size")
    return [
        {
            "name": manifest.get("name"),
            "steps": steps,
            "images": steps * batch if isinstance(steps, int) and isinstance(batch, int) else None,
            "about": manifest.get("description"),
        }
    ]


def cached_legs(workdir: Path, finished: dict, start_legs=None) -> list[dict]:
    """The legs of a model trained into the cache: its start's legs (a relay: each leg starts
    from the last one's weights) and its own, with each session's steps, seconds and machine
    (compute.json, qdcore/training/train.py). `start_legs(record)` finds the legs of a start
    recorded before starts carried them."""
    start = finished.get("start") if isinstance(finished.get("start"), dict) else None
    earlier = (start or {}).get("legs")
    if start is not None and not earlier and start_legs is not None:
        earlier = start_legs(start)
    sessions = [s for s in finished.get("compute") or [] if isinstance(s, dict)]
    total = lambda key: round(sum(float(s.get(key) or 0) for s in sessions), 1) if sessions else None  # noqa: E731
    steps, batch = finished.get("step"), (finished.get("train") or {}).get("batch_size")
    own = {
        "name": Path(workdir).name,
        "steps": steps,
        "images": steps * batch if isinstance(steps, int) and isinstance(batch, int) else None,
        "start": (start or {}).get("from"),
        "wall_s": total("wall_s"),
        "cpu_s": total("cpu_s"),
        "sessions": sessions,
    }
    return list(earlier or []) + [own]


def manifest_of_cached(workdir: Path, name: str, start_legs=None) -> dict:
    """The manifest of a model trained into the cache, from what training left beside it
    (the format fields, `format_version` and `files`, are the writer's: see `write`)."""
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
        "legs": cached_legs(workdir, finished, start_legs),
        "qd_version": __version__,
    }


def version_for(path: Path) -> int:
    """The format a pack file is written in: 1 for a name ending in .qdpack, else 2."""
    return 1 if Path(path).suffix.lower() == SUFFIX_V1 else 2


def card_path(path: Path) -> Path:
    """The model card `qd models export` writes beside the pack file `path`."""
    path = Path(path)
    return path.with_name(path.stem + CARD_SUFFIX)


def encode(manifest: dict, weights: Union[Weights, dict], version: int, where="the pack") -> tuple[dict, bytes]:
    """The manifest with its format fields set, and the file of that format. `weights` is a
    pack's Weights (of either format: converted when it is the other one) or named arrays."""
    m = {**manifest, "format": FORMAT, "format_version": version}
    m.pop("files", None)
    if version == 1:
        if isinstance(weights, Weights) and weights.version == 1:
            npz = weights.raw
        else:
            buf = io.BytesIO()
            arrays = weights.arrays(where) if isinstance(weights, Weights) else weights
            np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
            npz = buf.getvalue()
        m["files"] = {WEIGHTS: {"sha256": hashlib.sha256(npz).hexdigest(), "bytes": len(npz)}}
        raw = json.dumps(m, indent=1, sort_keys=True).encode()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for name, data in ((MANIFEST, raw), (WEIGHTS, npz)):
                # Fixed timestamps: the same model gives the same bytes.
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                z.writestr(info, data)
        return m, buf.getvalue()
    from safetensors.numpy import save as save_tensors

    arrays = weights.arrays(where) if isinstance(weights, Weights) else weights
    # Little-endian float32, in name order: the layout safetensors writes (one dtype, sorted by
    # name, no padding) and the one _read_safetensors requires, so the checksum of the data
    # section is the checksum of these bytes in this order.
    tensors = {k: np.ascontiguousarray(arrays[k], dtype="<f4") for k in sorted(arrays)}
    data = b"".join(t.tobytes() for t in tensors.values())
    m["files"] = {TENSORS: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    return m, save_tensors(tensors, metadata={META_KEY: json.dumps(m, indent=1, sort_keys=True)})


def write(path: Path, manifest: dict, weights: Union[Weights, dict]) -> Path:
    """The pack file (format by its suffix: `version_for`) and its model card beside it
    (`card_path`), each written atomically, the card first: a new pack never lies there
    without its card. Nothing is written unless import would take the pack."""
    version = version_for(path)
    path = check_target(path, str(Path(path) / (manifest["name"] + SUFFIX)))
    card = check_target(card_path(path))
    manifest, blob = encode(manifest, weights, version, path)
    _importable(path, blob)
    from .cards import card_text

    text = card_text(manifest, path.name)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
        with atomic_path(card) as tmp_card:
            # A manifest's text may hold lone surrogates (JSON's \ud800), which no UTF-8 can.
            tmp_card.write_text(text, encoding="utf-8", errors="backslashreplace")
    return path


def _importable(path: Path, blob: bytes) -> None:
    """Export writes only what import reads: the same checks, on the bytes about to be written."""
    try:
        limit = limit_bytes()
        if len(blob) > limit:
            raise _refuse(path, f"would be over the limits of a model pack (set {LIMIT_ENV} to allow more)")
        pack, weights = _checked(path, _read_stream(path, io.BytesIO(blob), len(blob), limit, False))
        check_weights(pack, weights.arrays(path))
    except InputError as e:
        raise InputError(f"not exported: `qd models import` would refuse it: {e}") from None


# -- import ---------------------------------------------------------------------------------


def import_pack(file: Path, cache_dir: Path, force: bool = False) -> Pack:
    """Check the file whole (its structure, manifest, checksum, weights against the model)
    before the cache is touched; then copy it into a temporary folder inside the cache (format
    2 as `model.safetensors`, format 1 as its two members), check that copy again, and rename
    it into place. A refusal leaves the cache as it was."""
    file = Path(file)
    if not file.exists():
        raise InputError(f"{file}: no such file")
    pack, weights = read(file)
    check_weights(pack, weights.arrays(pack.path))  # finite, and fit the manifest's model (nothing built)
    _refuse_existing(imported_root(cache_dir) / pack.name, force)  # before the lock: a refusal writes nothing
    from .training.locks import hold

    # One import at a time: two of one name without --force could otherwise both find it absent.
    with hold(Path(cache_dir) / ".packs-import.lock", "importing a model pack"):
        return _install(pack, weights, cache_dir, force)


def _refuse_existing(target: Path, force: bool) -> None:
    if (target.exists() or target.is_symlink()) and not force:
        raise InputError(f"a model named {target.name!r} is already imported ({target}); add --force to replace it")


def _install(pack: Pack, weights: Weights, cache_dir: Path, force: bool) -> Pack:
    root = imported_root(cache_dir)
    target = root / pack.name
    _refuse_existing(target, force)  # again, under the lock: another import may have made it meanwhile
    made_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    temp = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    old = None
    try:
        if weights.version == 1:
            (temp / MANIFEST).write_bytes(json.dumps(pack.manifest, indent=1, sort_keys=True).encode())
            (temp / WEIGHTS).write_bytes(weights.raw)
        else:  # the file as it came: every byte of it was checked
            (temp / IMPORTED).write_bytes(weights.raw)
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
    as_name: Optional[str] = None,
) -> Pack:
    """Write the model `name` as a pack file at `file`, with its model card beside it
    (`card_path`): a model trained into the cache (by name, or by folder name when several
    share one), else an imported or installed pack (converted when `file` asks for the other
    format). The format follows `file`'s suffix: .qdpack is format 1, anything else format 2.
    `description` and `figures` (a JSON file: recognizer figures measured by whoever made the
    model, e.g. per category) replace the manifest's; `as_name` names the pack (a relay leg's
    recipe, zoo-26-relay, exported as the next zoo-26)."""
    if as_name is not None and not NAME.fullmatch(as_name):
        raise InputError(f"--name {as_name!r} is not a pack name (letters, digits, '.', '_', '-')")
    check_target(file, str(Path(file) / (name + SUFFIX)))  # before any model is read
    check_target(card_path(Path(file).expanduser().absolute()))
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
        weights = model_arrays(trained.model)
        earlier = lambda start: _start_legs(start, cache_dir, installed)  # noqa: E731
        manifest = manifest_of_cached(workdir, as_name or pack_name, earlier)
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
        if as_name is not None:
            manifest["name"] = as_name
    if description is not None:
        manifest["description"] = description
    if extra is not None:
        manifest["recognizer"] = extra
    return read(write(file, manifest, weights), verify=False)[0]


def _start_legs(start: dict, cache_dir: Path, installed: dict) -> Optional[list]:
    """The legs of a pack a run started from before start records carried them: that pack's,
    found by name, when it is those weights (the same checksum) or a pack from before legs
    (its weights may since have moved to another format). A pack of that name that lists
    legs and holds other weights may be this very run's export: then the legs are unknown."""
    identity = start.get("identity") or {}
    name = identity.get("pack")
    found = find(cache_dir, name, installed.get(name)) if isinstance(name, str) else None
    if found is None or (found.manifest.get("legs") and found.sha256 != identity.get("sha256")):
        return None
    return legs(found.manifest)


def _figures(path: Path) -> dict:
    try:
        raw = Path(path).read_bytes()[: MANIFEST_LIMIT + 1]
        value = json.loads(raw.decode("utf-8")) if len(raw) <= MANIFEST_LIMIT else None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: cannot read it as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: the figures must be one JSON object of at most 1 MB, for example qd eval's output")
    return value
