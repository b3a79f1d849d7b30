"""qd: train DRAW on Quick, Draw! doodles and turn what it draws into GIFs.

Plugin authors import everything they need from here and never import pluggy:

    from qdcore import hookimpl, SeedStrategy, Range

Everything a built-in plugin uses is here too (atomic writes, the data and cache folders,
opening images, checking category names, the two-ink composite), so any file under plugins/
can be copied as a template: none of them imports a qdcore submodule or a private name
(tests/test_imports.py). docs/writing-plugins.md lists this surface.

Importing qdcore does not import TensorFlow.
"""

from .atomic import atomic_path, current_umask, remove_stale_parts
from .categories import ALL, check_categories
from .errors import (
    WRITE_ERRNOS,
    InputError,
    PluginError,
    QdError,
    RecipeError,
    TrainingError,
    UnknownNameError,
    WriteError,
)
from .hookspecs import hookimpl
from .images import open_image, reading
from .imagestack import ImageStack
from .ink import two_inks
from .interfaces import (
    Context,
    Dataset,
    Drawing,
    Filter,
    Generator,
    ImageSet,
    ModeCheck,
    SeedInput,
    SeedStrategy,
    Writer,
)
from .params import Range
from .paths import cache_dir, data_dir
from .recognizer import Classifier, Recognizer

__version__ = "0.1.0"

__all__ = [
    "hookimpl",
    "Range",
    "Context",
    "Dataset",
    "Drawing",
    "Filter",
    "ImageSet",
    "ImageStack",
    "SeedInput",
    "SeedStrategy",
    "Writer",
    "Generator",
    "ModeCheck",
    "QdError",
    "RecipeError",
    "UnknownNameError",
    "InputError",
    "PluginError",
    "TrainingError",
    "WriteError",
    "WRITE_ERRNOS",
    "Recognizer",
    "Classifier",
    "__version__",
    # What the built-ins use beyond the interfaces (docs/writing-plugins.md, "The public surface").
    "atomic_path",
    "remove_stale_parts",
    "current_umask",
    "data_dir",
    "cache_dir",
    "open_image",
    "reading",
    "ALL",
    "check_categories",
    "two_inks",
]
