"""qd: train DRAW on Quick, Draw! doodles and turn what it draws into GIFs.

Plugin authors import everything they need from here and never import pluggy:

    from qdcore import hookimpl, SeedStrategy, Range

Importing qdcore does not import TensorFlow.
"""
from .errors import InputError, PluginError, QdError, RecipeError, TrainingError, UnknownNameError
from .hookspecs import hookimpl
from .imagestack import ImageStack
from .interfaces import Context, Dataset, Drawing, Filter, Generator, ImageSet, SeedInput, SeedStrategy, Writer
from .params import Range
from .recognizer import Classifier, Recognizer

__version__ = "0.1.0"

__all__ = [
    "hookimpl", "Range", "Context", "Dataset", "Drawing", "Filter", "ImageSet", "ImageStack", "SeedInput",
    "SeedStrategy", "Writer", "Generator", "QdError", "RecipeError", "UnknownNameError", "InputError",
    "PluginError", "TrainingError", "Recognizer", "Classifier", "__version__",
]
