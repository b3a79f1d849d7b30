"""Built-in model packs: every `packs/*.qdpack` shipped in this package's data, registered
under the name in its file name (docs/packs.md). With no pack file present nothing is
registered, and `qd plugins` shows this plugin providing nothing."""

from __future__ import annotations

from pathlib import Path

from qdcore import hookimpl

FOLDER = Path(__file__).resolve().parent / "packs"


@hookimpl
def qd_register_models(register):
    for file in sorted(FOLDER.glob("*.qdpack")):
        register(file.stem, file, description=f"trained model pack shipped with qd ({file.name})")
