"""ipo: find human-readable prompts for CLIP models with an LLM in the loop.

The public face is small; each module holds one responsibility (see README).
Heavy libraries (torch, open_clip, llama_cpp) are imported only where needed.
"""

__version__ = "0.1.0"

from ipo_cli.errors import IpoError  # noqa: E402

__all__ = ["Classifier", "IpoError", "Prediction", "__version__"]


def __getattr__(name: str):
    """`from ipo_cli import Classifier` without importing numpy or torch for `ipo --help`."""
    if name in ("Classifier", "Prediction"):
        from ipo_cli.clip import classify

        return getattr(classify, name)
    raise AttributeError(name)
