"""Which machine the catalogue's default models are picked for.

The catalogue has a default LLM and LMM per kind of machine (`gpu` or `cpu`); a command
looks at the machine only when it has to pick a default, that is when the user named
neither a model nor a server. `ipo describe` uses this; `ipo optimize` makes the same
choice in its plan (optimize/job.py, `model_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DefaultsMachine:
    kind: str  # "gpu" or "cpu": which catalogue defaults apply
    warning: str | None = None  # e.g. torch sees a GPU that llama.cpp cannot use


def defaults_machine(model: str | None, url: str | None) -> DefaultsMachine:
    """The machine a default model would be chosen for; "cpu" (and no look at the
    hardware) when `model` or `url` names what to run."""
    if model or url:
        return DefaultsMachine("cpu")
    from ipo_cli.llm import placement

    found = placement.machine()
    return DefaultsMachine(found.kind, found.warning)
