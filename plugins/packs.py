"""Built-in model packs: every `packs/*.safetensors` (format 2) and `packs/*.qdpack` (format 1)
shipped in this package's data, registered under the name in its file name (docs/packs.md).
With no pack file present nothing is registered, and `qd plugins` shows this plugin providing
nothing."""

from __future__ import annotations

from pathlib import Path

from qdcore import hookimpl

FOLDER = Path(__file__).resolve().parent / "packs"


@hookimpl
def qd_register_models(register):
    found = {}
    # Format 1 first, so a format-2 file of the same name replaces it: a pack converted in
    # place (qd models export NAME packs/NAME.safetensors) is served as what it became.
    for suffix in (".qdpack", ".safetensors"):
        for file in sorted(FOLDER.glob(f"*{suffix}")):
            found[file.stem] = file
    for name, file in sorted(found.items()):
        register(name, file, description=f"trained model pack shipped with qd ({file.name})")
