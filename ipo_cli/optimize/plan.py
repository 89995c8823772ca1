"""The plan of a run, made before any model is loaded: which LLM and LMM run where (the
catalogue's defaults follow the machine), how many image descriptions fit the LLM's
context, and pulling a default model on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ipo_cli.errors import IpoError

if TYPE_CHECKING:
    from ipo_cli.optimize.request import Request


NO_OFFLOAD_NOTE = "--gpu-layers has no effect: every model runs on a server"


def model_plan(request: Request, use_lmm: bool, gpu_layers: int | None) -> dict:
    """Which LLM and LMM run, where, and why (the defaults follow the machine).
    `--gpu-layers` is resolved here, once per run, into plan["gpu_layers"] (what the
    llama.cpp models load with); when every model runs on a server it changes nothing,
    and the plan says so (plan["gpu_layers_note"])."""
    from ipo_cli.llm import placement as hardware
    from ipo_cli.llm import registry
    from ipo_cli.store.entries import default_model

    plan: dict[str, Any] = {}
    need_local = (not request.llm_url) or (use_lmm and not request.lmm_url)
    found = hardware.machine() if need_local else None
    if found is not None:
        plan["machine"] = found.kind
        plan["machine_why"] = found.why
        if found.warning:
            plan["warning"] = found.warning
    layers = hardware.resolve_gpu_layers(gpu_layers) if need_local else None
    if layers is not None:
        plan["gpu_layers"] = layers
    elif gpu_layers is not None:
        plan["gpu_layers_note"] = NO_OFFLOAD_NOTE
    where = hardware.where(layers) if need_local else None
    for role, given, url, used in (("llm", request.llm, request.llm_url, True),
                                   ("lmm", request.lmm, request.lmm_url, use_lmm)):
        if not used:
            plan[role], plan[f"{role}_where"] = "none", None
        elif url:
            plan[role], plan[f"{role}_where"] = url, "server"
        elif role == "lmm" and (given or "").lower() == "clip":  # ipo_cli/clip/attributes.py
            plan[role], plan[f"{role}_where"] = "clip", None
            plan["lmm_why"] = "the CLIP-only describer: visual attributes the run's CLIP sees, no multimodal model"
        elif registry.lookup(given, role) is not None:
            plan[role], plan[f"{role}_where"] = given, "a registered backend"  # llm/registry.py
        else:
            assert found is not None  # a model that runs here: the machine was looked at
            plan[role] = given or default_model(role, found.kind).name
            plan[f"{role}_where"] = where
            if not given:
                plan[f"{role}_why"] = f"default for a {found.kind} machine: {found.why}"
    return plan


def ensure_pulled(name: str, kind: str, offline: bool, pull: Callable[[str, int | None], Any]) -> None:
    """Pull a default model on first use, as open_clip and ollama do (not when offline)."""
    from ipo_cli.store import entries, hub, local

    if name in local.Manifest().load():
        return
    entry = entries.load_catalogue()[name]
    if offline or hub.offline():
        raise IpoError(f"the default {kind} {name!r} is not installed and ipo is offline",
                       f"run: ipo models pull {name} (when online), or pass --{kind} FILE.gguf")
    pull(name, entry.size)


# What a description is budgeted at when deciding how many fit the meta-prompt, before any
# is written: a typical detailed caption (half the 160-token cap) plus its "Image_i: "
# line; the task and instructions; and the first few history items (the meta-prompt then
# drops descriptions, seeded, as the history grows).
CAPTION_TOKENS = 80 + 8
META_OVERHEAD = 600
HISTORY_ITEM_TOKENS = 60
HISTORY_RESERVED = 5


def described_subset(request: Request, plan: dict, n_images: int) -> list[int]:
    """Which training images to caption: a subset drawn with --seed, as many as fit the
    LLM's context next to the first history items (each description at a typical length,
    CAPTION_TOKENS), so that LMM calls are not spent on descriptions the meta-prompt would
    leave out."""
    import random

    from ipo_cli.store.entries import load_catalogue

    n_ctx = request.n_ctx
    if n_ctx is None and not request.llm_url:
        entry = load_catalogue().get(plan.get("llm", ""))
        n_ctx = entry.n_ctx if entry else None
    n_ctx = n_ctx or 8192
    from ipo_cli.optimize.strategies import feedback_tokens

    room = n_ctx - request.max_tokens - 16 - META_OVERHEAD - min(request.history, HISTORY_RESERVED) * HISTORY_ITEM_TOKENS \
        - feedback_tokens(request.feedback)  # a strategy's section is shown every step: room kept for it
    fit = max(0, room // CAPTION_TOKENS)
    order = list(range(n_images))
    random.Random(request.seed).shuffle(order)
    return sorted(order[:fit])
