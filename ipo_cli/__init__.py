"""ipo: find human-readable prompts for CLIP models with an LLM in the loop.

The public face is small: the `Classifier` an optimised prompt labels images with, its
`Prediction`s, and the errors the library raises (`IpoError` and its kinds). Each module
holds one responsibility (see README). Heavy libraries (torch, open_clip, llama_cpp, numpy)
are imported only where needed, so `from ipo_cli import Classifier` costs nothing until
the classifier is made. The package ships `py.typed`: these names are typed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipo_cli.errors import InvalidInput, IpoError, ModelError, NetworkError, NotFound

if TYPE_CHECKING:
    from ipo_cli.clip.classify import Classifier, Prediction

__version__ = "0.1.0"

__all__ = ["Classifier", "InvalidInput", "IpoError", "ModelError", "NetworkError", "NotFound", "Prediction",
           "__version__"]


def __getattr__(name: str) -> Any:
    """`from ipo_cli import Classifier` without importing numpy or torch for `ipo --help`."""
    if name in ("Classifier", "Prediction"):
        from ipo_cli.clip import classify

        return getattr(classify, name)
    raise AttributeError(name)
