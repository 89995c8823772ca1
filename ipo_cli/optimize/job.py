"""`ipo optimize` as a library call: wires dataset, CLIP, captions, the LLM, the loop and
the run folder together. The CLI only gathers a `Request` and renders what `Reporter`
callbacks and the returned summary tell it."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ipo_cli import __version__
from ipo_cli.errors import IpoError
from ipo_cli.optimize.loop import BUDGETS, LoopSettings

DEFAULT_BASELINE = "a photo of a {}."


@dataclass
class Request:
    """Everything a user can set; stored in config.json so that --resume alone suffices."""

    images: str
    classes: str | None = None
    split: str | None = None
    shots: int = 1
    seed: int = LoopSettings.seed
    base_novel: bool = False
    # the loop's own defaults live in LoopSettings; a Request only repeats their names
    steps: int = LoopSettings.steps
    candidates: int = LoopSettings.candidates
    history: int = LoopSettings.history
    patience: int = LoopSettings.patience
    temperature: float = LoopSettings.temperature
    max_tokens: int = LoopSettings.max_tokens
    task_hint: str | None = None
    select: str = LoopSettings.select
    llm: str | None = None
    llm_url: str | None = None
    llm_model: str | None = None
    n_ctx: int | None = None
    lmm: str | None = None
    mmproj: str | None = None
    handler: str | None = None
    lmm_url: str | None = None
    lmm_model: str | None = None
    clip: str = "ViT-B-16:openai"
    clip_weights: str | None = None
    test_images: str | None = None
    allow_outside_root: bool = False
    dataset: str | None = None  # a CoOp dataset preset (presets.py), with data_root
    data_root: str | None = None
    baseline: str | None = None  # the hand-written template reports compare with

    # settings that must not change on resume (all of them but where results go)
    def settings(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Refuse values that cannot mean anything (and could never be resumed: nan != nan)."""
        import math

        checks = [
            ("--temperature", self.temperature, 0.0, 5.0), ("--shots", self.shots, 1, 10_000),
            ("--steps", self.steps, 1, 100_000), ("--candidates", self.candidates, 1, 1000),
            ("--history", self.history, 0, 100_000), ("--patience", self.patience, 1, 100_000),
            ("--max-tokens", self.max_tokens, 8, 100_000), ("--seed", self.seed, 0, 2**63 - 1),
        ]
        if self.n_ctx is not None:
            checks.append(("--n-ctx", self.n_ctx, 256, 10_000_000))
        from ipo_cli.llm.openai_http import check_url

        for flag, url in (("--llm-url", self.llm_url), ("--lmm-url", self.lmm_url)):
            if url:
                check_url(url, flag)
        for flag, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high:
                raise IpoError(f"{flag} must be a number from {low} to {high}, not {value!r}")

    @classmethod
    def from_dict(cls, data: dict) -> Request:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _overrides():
    from dataclasses import make_dataclass
    from typing import Optional

    return make_dataclass("Overrides", [(f.name, Optional[f.type], None) for f in fields(Request)])


# What the user typed: every Request field, None where not given. The CLI builds this
# directly, so a flag that names no setting fails at once instead of vanishing in a dict.
Overrides = _overrides()


def make_request(given: dict | Any, budget: str | None = None, saved: dict | None = None) -> Request:
    """The settings of a run, in one place, by precedence: what the user typed, then the
    presets (--budget's steps x candidates; --dataset's images, task hint and baseline
    template), then a resumed run's saved settings, then the defaults."""
    if not isinstance(given, dict):  # Overrides
        given = {k: v for k, v in asdict(given).items() if v is not None}
    data = dict(saved or {})
    if budget:
        if budget not in BUDGETS:
            raise IpoError(f"--budget must be one of {', '.join(BUDGETS)}, not {budget!r}")
        data["steps"], data["candidates"] = BUDGETS[budget]
    dataset = given.get("dataset") or data.get("dataset")
    if dataset:
        from ipo_cli.data import coop as presets

        preset = presets.get(dataset)
        root = given.get("data_root") or data.get("data_root")
        data.update(dataset=preset.name, task_hint=preset.hint, baseline=preset.template,
                    images=str(presets.images_folder(preset, Path(root))) if root else None)
        for key in ("split", "classes"):
            if given.get(key):
                raise IpoError(f"--{key} and --dataset both say where the images are", "pass one of them")
    data.update(given)
    if not data.get("images"):
        raise IpoError("missing the images folder",
                       "ipo optimize IMAGES --classes classes.txt, --dataset NAME --data-root DIR, or --resume DIR")
    try:
        request = Request.from_dict(data)
    except TypeError as exc:
        raise IpoError(f"the saved settings are malformed: {exc}", "start a new run") from None
    request.check()
    return request


class Reporter:
    """Callbacks the job uses to talk to its user; the defaults say nothing."""

    def plan(self, plan: dict) -> None: ...

    def status(self, message: str):
        return contextlib.nullcontext()

    def progress(self, description: str, total: int):
        return contextlib.nullcontext(lambda n=1, **kw: None)

    def warn(self, message: str) -> None: ...

    def pull(self, name: str, size: int | None) -> Any:
        from ipo_cli.store.pull import pull

        return pull(name)

    def step(self, summary: dict, state) -> None: ...


def _ensure_pulled(name: str, kind: str, offline: bool, reporter: Reporter) -> None:
    """Pull a default model on first use, as open_clip and ollama do (not when offline)."""
    from ipo_cli.store import entries, hub, local

    if name in local.Manifest().load():
        return
    entry = entries.load_catalogue()[name]
    if offline or hub.offline():
        raise IpoError(f"the default {kind} {name!r} is not installed and ipo is offline",
                       f"run: ipo models pull {name} (when online), or pass --{kind} FILE.gguf")
    reporter.pull(name, entry.size)


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
    room = n_ctx - request.max_tokens - 16 - META_OVERHEAD - min(request.history, HISTORY_RESERVED) * HISTORY_ITEM_TOKENS
    fit = max(0, room // CAPTION_TOKENS)
    order = list(range(n_images))
    random.Random(request.seed).shuffle(order)
    return sorted(order[:fit])


def _sample(request: Request):
    """Training (and validation) images as CoOp/Dassl draw them: one generator seeded with
    --seed draws K shots per class over all classes (labels in the order they first appear
    in the split's train list), then the val sample with min(K, 4) shots from the split's
    val list (CoOp's dataset classes), and only then are the classes cut to the base half
    (`subsample_classes`). The val sample is drawn even when not used, so the training
    images are the same with --select train or val."""
    import random

    from ipo_cli.data import folders as ds

    full = _load(request, "train")
    if len(full.classnames) < 2:
        raise IpoError(f"{request.images} has {len(full.classnames)} class; prompt optimisation needs at least two")
    base_labels = list(range(len(full.classnames)))
    if request.base_novel:
        base_labels, _ = ds.base_novel_labels(len(full.classnames))
        if len(base_labels) < 2:
            raise IpoError("--base-novel leaves fewer than two base classes", "use at least four classes")
    rng = random.Random(request.seed)
    train_all = ds.few_shot(full, request.shots, rng)
    k = min(request.shots, 4)
    val_source = _val_source(request, full, train_all)
    val_all = ds.few_shot(val_source, k, rng, strict=False) if val_source is not None else None
    train = train_all.subset_classes(base_labels)
    val = None
    if request.select == "val":
        if val_all is None or any(len(v) == 0 for v in val_all.subset_classes(base_labels).by_label().values()):
            raise IpoError("not enough images for the validation sample of --select val",
                           "add images, or use --select train")
        val = val_all.subset_classes(base_labels)
    return full, train, val


def _load(request: Request, part: str):
    from ipo_cli.data import folders as ds

    if request.dataset:
        from ipo_cli.data import coop as presets

        return presets.load(request.dataset, request.data_root, part)
    return ds.load_dataset(Path(request.images), Path(request.classes) if request.classes else None,
                           Path(request.split) if request.split else None, part, request.allow_outside_root)


def _val_source(request: Request, full, train):
    """CoOp's val list: the split file's val part; for a plain folder, the images not drawn
    for training."""
    if request.dataset or request.split:
        try:
            return _load(request, "val")
        except IpoError:
            return None  # no val part: CoOp's ImageNet draws no val sample either
    return full.without(set(train.paths))


def _test_set(request: Request, full):
    from ipo_cli.data import folders as ds

    if request.test_images:
        return ds.load_dataset(Path(request.test_images), Path(request.classes) if request.classes else None)
    if request.dataset:
        return _load(request, "test")
    if request.split:
        return ds.load_split(Path(request.split), Path(request.images), "test", request.allow_outside_root)
    raise IpoError("--base-novel needs held-out images to report base and novel accuracy",
                   "pass --test-images DIR (same classes) or a --split file with a test part")


def versions() -> dict:
    import importlib.metadata as md

    out = {"ipo": __version__}
    for pkg in ("torch", "open_clip_torch", "llama_cpp_python", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def model_plan(request: Request, use_lmm: bool, gpu_layers: int | None) -> dict:
    """Which LLM and LMM run, where, and why (the defaults follow the machine)."""
    from ipo_cli.llm import placement as hardware
    from ipo_cli.store.entries import default_model

    plan: dict[str, Any] = {}
    need_local = (not request.llm_url) or (use_lmm and not request.lmm_url)
    found = hardware.machine() if need_local else None
    if found is not None:
        plan["machine"] = found.kind
        plan["machine_why"] = found.why
        if found.warning:
            plan["warning"] = found.warning
    where = hardware.where(gpu_layers) if need_local else None
    for role, given, url, used in (("llm", request.llm, request.llm_url, True),
                                   ("lmm", request.lmm, request.lmm_url, use_lmm)):
        if not used:
            plan[role], plan[f"{role}_where"] = "none", None
        elif url:
            plan[role], plan[f"{role}_where"] = url, "server"
        else:
            plan[role] = given or default_model(role, found.kind).name
            plan[f"{role}_where"] = where
            if not given:
                plan[f"{role}_why"] = f"default for a {found.kind} machine: {found.why}"
    return plan


def run(request: Request, out: Path, resume: bool = False, force: bool = False, offline: bool = False,
        cache_dir: Path | None = None, reporter: Reporter | None = None, device: str = "auto",
        gpu_layers: int | None = None, parallel: int | None = None) -> dict:
    """The whole `ipo optimize`. `gpu_layers` (llama.cpp offload) and `parallel` (candidates
    in flight to a server; default: --candidates) change where and how fast, not what is
    computed, so they are not part of the run's saved settings."""
    from ipo_cli import cache
    from ipo_cli.llm import captions as describe
    from ipo_cli.clip import evaluate
    from ipo_cli.optimize import history_md as report
    from ipo_cli.clip.model import load_clip
    from ipo_cli.clip.spec import parse_clip
    from ipo_cli.llm.loading import load_llm
    from ipo_cli.optimize.loop import ClipScorer, Optimizer
    from ipo_cli.optimize.run_folder import RunFolder, compare_settings

    reporter = reporter or Reporter()
    started = time.perf_counter()
    if resume:
        folder, saved = RunFolder.open(out, lock=True)
        diffs = compare_settings(saved.get("request", {}), request.settings())
        if diffs:
            raise IpoError(f"cannot resume {out} with different settings ({'; '.join(diffs)})",
                           "resume with the run's own settings (just --resume DIR), or start a new run with --out")
        folder.records()  # a damaged history is reported now, not after the models are loaded
    else:
        RunFolder.check_target(out, force)
    if request.select not in ("train", "val"):
        raise IpoError(f"--select must be train or val, not {request.select!r}")
    full, train, val = _sample(request)
    if resume:  # before any model is loaded: every saved training image must be drawn again
        drawn = {"train": [[str(p), label] for p, label in zip(train.paths, train.labels)]}
        _refuse_changed_sample(out, saved.get("split"), drawn, both_ways=False)
    use_lmm = (request.lmm or "").lower() != "none"
    if parallel is not None and parallel < 1:
        raise IpoError(f"--parallel must be at least 1, not {parallel}")
    models_plan = model_plan(request, use_lmm, gpu_layers)
    parallel = parallel or request.candidates
    plan = {
        "images": len(full.items), "classes": len(full.classnames), "train_classes": len(train.classnames),
        "shots": request.shots, "train_images": len(train.items), "val_images": len(val.items) if val else 0,
        "steps": request.steps, "candidates": request.candidates,
        "llm_calls_max": request.steps * request.candidates,
        "captions": 0,
        **models_plan,
        "parallel": parallel if request.llm_url else 1,
        "clip": request.clip, "out": str(out),
    }
    described = described_subset(request, plan, len(train.items)) if use_lmm else []
    plan["captions"] = len(described)
    plan["captions_of"] = len(train.items)
    reporter.plan(plan)
    if not request.llm and not request.llm_url:
        _ensure_pulled(plan["llm"], "llm", offline, reporter)
    if use_lmm and not request.lmm and not request.lmm_url:
        _ensure_pulled(plan["lmm"], "lmm", offline, reporter)

    root = cache.cache_root(cache_dir)
    spec = parse_clip(request.clip, request.clip_weights)
    with reporter.status(f"loading CLIP {spec.identity}"):
        clip = load_clip(spec, device)
    store = cache.Store(root, "embeddings")
    clip.remember(store)  # text embeddings on disk too: later evals and reports need no model
    sets = []
    for name, data in (("train", train), ("val", val)):
        if data is None:
            sets.append(None)
            continue
        with reporter.progress(f"embedding {name} images", len(data.items)) as advance:
            embedded = evaluate.embed_dataset(clip, data, store, progress=advance)
        for path, reason in embedded.skipped:
            reporter.warn(f"skipped unreadable image {path}: {reason}")
        sets.append(embedded)
    train_set, val_set = sets

    descriptions: list[str] = []
    described_images: list[dict] = []
    lmm_identity = "none"
    if use_lmm:
        with reporter.status("loading the multimodal model"):
            backend = describe.load_vision(plan["lmm"] if not request.lmm_url else None,
                                           Path(request.mmproj) if request.mmproj else None,
                                           request.handler, request.lmm_url, request.lmm_model,
                                           gpu_layers=gpu_layers)
        lmm_identity = backend.identity
        captioner = describe.Captioner(backend, cache.Store(root, "captions"))
        chosen, readable = set(described), set(train_set.dataset.paths)
        paths = [p for i, p in enumerate(train.paths) if i in chosen and p in readable]
        # only the classes the loop trains on are redacted, and only as whole phrases
        with reporter.progress("describing images", len(paths)) as advance:
            captions = captioner.caption(paths, train_set.dataset.classnames, progress=advance)
        for path, reason in captions.failed:
            reporter.warn(f"no description for {path}: {reason}")
        descriptions = [c.caption for c in captions.captions]
        described_images = [{"path": c.path, "description": c.caption} for c in captions.captions]

    with reporter.status("loading the LLM"):
        llm = load_llm(plan["llm"] if not request.llm_url else None, request.llm_url, request.llm_model,
                       request.n_ctx, gpu_layers=gpu_layers)
    models = {"llm": llm.identity, "lmm": lmm_identity, "clip": clip.identity}
    config = {
        "ipo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "request": request.settings(),
        "models": models,
        "versions": versions(),
        "classnames": full.classnames,
        "train_classnames": train_set.dataset.classnames,
        "split": {name: [[str(p), int(l)] for p, l in zip(s.dataset.paths, s.labels)]
                  for name, s in (("train", train_set), ("val", val_set)) if s is not None},
        "descriptions": described_images,  # what the LLM was shown, per image (ipo report)
    }
    if resume:
        diffs = compare_settings(saved.get("models", {}), models)
        if diffs:
            raise IpoError(f"cannot resume {out}: the models differ ({'; '.join(diffs)})",
                           "resume with the same model files")
        _refuse_changed_sample(out, saved.get("split"), config["split"])
    else:
        folder = RunFolder.create(out, config, force)

    loop = LoopSettings(**{f.name: getattr(request, f.name) for f in fields(LoopSettings) if hasattr(request, f.name)})
    scorer = ClipScorer(clip, train_set, val_set)
    optimizer = Optimizer(llm, scorer, folder, loop, descriptions, cache.Store(root, "generations"),
                          on_step=reporter.step, parallel=parallel)
    result = optimizer.run()
    if result.interrupted and not result.ranking:
        raise KeyboardInterrupt  # stopped before even the baseline was scored: nothing to write
    name = Path(request.images).resolve().name
    report.write_outputs(folder, result, name, clip.identity, request.select,
                         {"run": str(folder.path), "models": models, "seed": request.seed})
    if not result.interrupted:
        from ipo_cli.explain import report as insight

        try:  # the interpretability report: plots and HTML under RUN/report/
            insight.write(insight.build(folder.path, clip=clip, train=train_set), folder.path / "report")
        except (IpoError, OSError, ValueError) as exc:
            reporter.warn(f"the report could not be written: {exc}")
    summary = summarize(result, folder, models, time.perf_counter() - started)
    summary["plan"] = plan
    if request.base_novel and not result.interrupted:
        test = _test_set(request, full)
        with reporter.progress("embedding test images", len(test.items)) as advance:
            test_set = evaluate.embed_dataset(clip, test, store, progress=advance)
        from ipo_cli.data.prompts import parse_prompts

        evaluation = evaluate.evaluate(clip, test_set, parse_prompts([result.best["template"]]),
                                       baseline=request.baseline or DEFAULT_BASELINE, base_novel=True,
                                       seed=request.seed)
        folder.write_json("eval_base_novel.json", evaluation.to_json())
        best_row, base_row = evaluation.rows[0], evaluation.rows[-1]
        summary["base_novel"] = {
            "test_images": evaluation.n_images,
            "best": {"base": best_row.base, "novel": best_row.novel, "hm": best_row.hm},
            "baseline": {"base": base_row.base, "novel": base_row.novel, "hm": base_row.hm},
            "hm_delta": best_row.delta, "hm_delta_ci": [best_row.delta_low, best_row.delta_high],
        }
    folder.write_json("summary.json", summary)
    return summary


def _refuse_changed_sample(out: Path, saved: Any, now: dict, both_ways: bool = True) -> None:
    changed = sample_changes(saved, now, both_ways)
    if changed:
        raise IpoError(f"cannot resume {out}: the training images changed since the run began ({changed})",
                       "restore the images, or start a new run")


def sample_changes(saved: Any, now: dict, both_ways: bool = True) -> str | None:
    """The first difference between the sample a run was started with and today's
    (`both_ways=False`: only saved images that are no longer in today's sample)."""
    if not isinstance(saved, dict):
        return "the run's config.json records no sample"
    for part, items in now.items():
        before = saved.get(part)
        if not isinstance(before, list):
            return f"the run recorded no {part} sample"
        old = {str(p): l for p, l in (e for e in before if isinstance(e, list) and len(e) == 2)}
        new = {p: l for p, l in items}
        for path in old:
            if path not in new:
                return f"{part} image {path} is missing or unreadable now" if not Path(path).is_file() else \
                    f"{part} image {path} is no longer in the sample"
        for path in new:
            if both_ways and path not in old:
                return f"{part} image {path} was not in the run's sample"
        for path, label in new.items():
            if path in old and old[path] != label:
                return f"{part} image {path} has another class now"
    return None


def summarize(result, folder, models: dict, seconds: float) -> dict:
    state = result.state
    best, baseline = result.best, result.baseline
    return {
        "run": str(folder.path),
        "best": {"template": best["template"], "accuracy": best["accuracy"], "loss": best["loss"],
                 **({"val_accuracy": best["val_accuracy"]} if "val_accuracy" in best else {})},
        "baseline": {"template": baseline["template"], "accuracy": baseline["accuracy"], "loss": baseline["loss"]},
        "gain": best["accuracy"] - baseline["accuracy"],
        "steps": state.steps_done[-1]["step"] if state.steps_done else 0,
        "stopped_early": result.stopped_early,
        "interrupted": result.interrupted,
        "llm_calls": state.calls,
        "llm_calls_cached": state.cached_calls,
        "valid_candidates": sum(1 for r in result.ranking if r["step"] > 0),
        "tokens": state.usage.to_json(),
        "seconds": round(seconds, 2),
        "models": models,
    }
