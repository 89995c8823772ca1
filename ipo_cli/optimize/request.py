"""What a run is asked to do (`Request`), what the user typed (`Overrides`), and where it
runs (`Placement`).

A `Request` holds every setting that decides what is computed; it is stored in the run's
config.json so that `--resume DIR` alone suffices, and a resumed run must ask for the same.
`Placement` (device, llama.cpp offload, requests in flight, cache folder, offline) changes
where and how fast, never the result, so it is not saved and may differ on resume.
`make_request` applies the one order of precedence: typed flags, then the presets
(`--budget`; `--dataset`'s images, task hint and baseline template), then a resumed run's
saved settings, then the defaults. Each setting's limits are stated once, in `LIMITS`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ipo_cli.clip.spec import DEFAULT_CLIP
from ipo_cli.errors import IpoError
from ipo_cli.optimize.loop import LoopSettings

# --budget: steps x candidates
BUDGETS = {"light": (10, 4), "medium": (30, 5), "heavy": (100, 8)}

# The one range check of each numeric setting (the CLI's min=/max= say the same).
LIMITS: dict[str, tuple[str, float, float]] = {
    "temperature": ("--temperature", 0.0, 5.0), "shots": ("--shots", 1, 10_000),
    "steps": ("--steps", 1, 100_000), "candidates": ("--candidates", 1, 1000),
    "history": ("--history", 0, 100_000), "patience": ("--patience", 0, 100_000),
    "hide_below": ("--hide-below", 0.0, 100.0),
    "max_tokens": ("--max-tokens", 8, 100_000), "seed": ("--seed", 0, 2**63 - 1),
    "n_ctx": ("--n-ctx", 256, 10_000_000),
}
PATH_FIELDS = ("images", "classes", "split", "mmproj", "clip_weights", "test_images", "data_root")


@dataclass
class Request:
    """Everything a user can set that decides the result; stored in config.json."""

    images: Path
    classes: Path | None = None
    split: Path | None = None
    shots: int = 1
    seed: int = LoopSettings.seed
    base_novel: bool = False
    # the loop's own defaults live in LoopSettings; a Request only repeats their names
    steps: int = LoopSettings.steps
    candidates: int = LoopSettings.candidates
    history: int = LoopSettings.history
    patience: int = LoopSettings.patience
    hide_below: float = LoopSettings.hide_below
    temperature: float = LoopSettings.temperature
    max_tokens: int = LoopSettings.max_tokens
    task_hint: str | None = None
    select: str = LoopSettings.select
    llm: str | None = None
    llm_url: str | None = None
    llm_model: str | None = None
    n_ctx: int | None = None
    lmm: str | None = None
    mmproj: Path | None = None
    handler: str | None = None
    lmm_url: str | None = None
    lmm_model: str | None = None
    clip: str = DEFAULT_CLIP
    clip_weights: Path | None = None
    test_images: Path | None = None
    allow_outside_root: bool = False
    dataset: str | None = None  # a CoOp dataset preset (data/coop.py), with data_root
    data_root: Path | None = None
    baseline: str | None = None  # the hand-written template reports compare with (--baseline)
    fresh_sample: bool = False  # draw anew even when CoOp's cached sample file exists (data/coop_cache.py)
    image_loading: str | None = None  # --image-loading; None: the source's own (data/folders.py load_image)
    # the strategies (optimize/strategies.py); the defaults are plain IPO
    feedback: str = LoopSettings.feedback
    history_order: str = LoopSettings.history_order
    pool: str = LoopSettings.pool

    def __post_init__(self) -> None:
        for name in PATH_FIELDS:  # paths stay Path until config.json is written
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, Path(value))

    def settings(self) -> dict:
        """The settings as config.json stores them (paths as text); all must match on resume."""
        data = asdict(self)
        for name in PATH_FIELDS:
            if data[name] is not None:
                data[name] = str(data[name])
        return data

    def check(self) -> None:
        """Refuse values that cannot mean anything (and could never be resumed: nan != nan)."""
        from ipo_cli.llm.openai_http import check_url

        for flag, url in (("--llm-url", self.llm_url), ("--lmm-url", self.lmm_url)):
            if url:
                check_url(url, flag)
        if self.image_loading is not None:
            from ipo_cli.data.folders import check_image_loading

            check_image_loading(self.image_loading)
        for name, (flag, low, high) in LIMITS.items():
            value = getattr(self, name)
            if value is None and name == "n_ctx":  # the model's own context
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
                from ipo_cli.gates.typed import value_kind

                raise IpoError(f"{flag} must be a number from {low} to {high}, not {value_kind(value)}")

    @classmethod
    def from_dict(cls, data: dict, source: str = "the run's settings") -> Request:
        """A Request from saved settings (a run's config.json is outside input): each value
        must be of its field's declared type (gates/typed.py reads the types from this
        dataclass, so a new field is checked without a list to keep in step); `source`
        names the file in the one-line error."""
        from ipo_cli.gates.typed import check_fields

        check_fields(data, cls, source, f"fix it in {source}, or start a new run")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def saved_settings(saved: dict) -> dict:
    """A run's saved settings as `Request.settings()` writes them today, so that an old run
    compares equal to itself: a path saved as "imgs/" reads back as "imgs", and a setting
    the run's version did not have yet is its default (what that version did)."""
    from dataclasses import MISSING

    defaults = {f.name: f.default for f in fields(Request) if f.default is not MISSING and f.name not in saved}
    return {**{k: str(v) if k in PATH_FIELDS and v is not None else v for k, v in defaults.items()},
            **{k: str(Path(v)) if k in PATH_FIELDS and isinstance(v, str) else v for k, v in saved.items()}}


@dataclass
class Overrides:
    """What the user typed: every Request field, None where not given. Written out (not
    generated) so that a type checker sees it; a test keeps it in step with Request."""

    images: Path | None = None
    classes: Path | None = None
    split: Path | None = None
    shots: int | None = None
    seed: int | None = None
    base_novel: bool | None = None
    steps: int | None = None
    candidates: int | None = None
    history: int | None = None
    patience: int | None = None
    hide_below: float | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    task_hint: str | None = None
    select: str | None = None
    llm: str | None = None
    llm_url: str | None = None
    llm_model: str | None = None
    n_ctx: int | None = None
    lmm: str | None = None
    mmproj: Path | None = None
    handler: str | None = None
    lmm_url: str | None = None
    lmm_model: str | None = None
    clip: str | None = None
    clip_weights: Path | None = None
    test_images: Path | None = None
    allow_outside_root: bool | None = None
    dataset: str | None = None
    data_root: Path | None = None
    baseline: str | None = None
    fresh_sample: bool | None = None
    image_loading: str | None = None
    feedback: str | None = None
    history_order: str | None = None
    pool: str | None = None

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class Placement:
    """Where and how fast a run computes; none of it changes whether the result is valid, so none
    of it is compared on resume. `batch` changes which answers an in-process LLM gives (a batch's
    kernels differ from one sequence's; the generation cache keys say which path made an answer),
    so config.json records it (`llm_answers`)."""

    device: str = "auto"  # CLIP: auto, cpu, cuda[:N]
    gpu_layers: int | None = None  # llama.cpp offload: None = all with a GPU build, else 0; -1 all
    parallel: int | None = None  # most requests in flight to --llm-url (default: the server's slots)
    threads: int | None = None  # CPU threads for llama.cpp and torch (default: llm/threads.py)
    batch: bool = True  # a step's candidates as one llama.cpp batch; False: --no-batch (other answers)
    cache_dir: Path | None = None
    offline: bool = False  # never download a default model

    def check(self) -> None:
        if self.parallel is not None and self.parallel < 1:
            raise IpoError(f"--parallel must be at least 1, not {self.parallel}")
        if self.threads is not None and self.threads < 1:
            raise IpoError(f"--threads must be at least 1, not {self.threads}")


def make_request(given: Overrides, budget: str | None = None, saved: dict | None = None,
                 source: str = "the run's saved settings") -> Request:
    """The settings of a run, by precedence: what the user typed, then the presets
    (--budget's steps x candidates; --dataset's images, task hint and baseline template),
    then a resumed run's saved settings (read from `source`, named in errors), then the
    defaults."""
    if saved:  # checked before anything is read from them (a float for --steps, a list as text)
        from ipo_cli.gates.typed import check_fields

        check_fields(saved, Request, source, f"fix it in {source}, or start a new run")
    typed = given.given()
    data = dict(saved or {})
    if budget:
        if budget not in BUDGETS:
            raise IpoError(f"--budget must be one of {', '.join(BUDGETS)}, not {budget!r}")
        data["steps"], data["candidates"] = BUDGETS[budget]
    dataset = typed.get("dataset") or data.get("dataset")
    if dataset:
        from ipo_cli.data import coop as presets

        preset = presets.get(dataset)
        root = typed.get("data_root") or data.get("data_root")
        data.update(dataset=preset.name, task_hint=preset.hint, baseline=preset.template,
                    images=str(presets.images_folder(preset, Path(root))) if root else None)
        for key in ("split", "classes"):
            if typed.get(key):
                raise IpoError(f"--{key} and --dataset both say where the images are", "pass one of them")
    data.update(typed)
    if not data.get("images"):
        raise IpoError("missing the images folder",
                       "ipo optimize IMAGES --classes classes.txt, --dataset NAME --data-root DIR, or --resume DIR")
    names = {f.name for f in fields(Request)}
    try:
        request = Request(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise IpoError(f"the saved settings are malformed: {exc}", "start a new run") from None
    request.check()  # each range, named by its flag
    from ipo_cli.gates.typed import check_fields

    check_fields(request.settings(), Request, "the settings", "pass each setting as its type")  # a library caller's 2.5
    return request
