"""`ipo optimize` as a library call: wires dataset, CLIP, captions, the LLM, the loop and
the run folder together, checks that a resumed run is the same run, and sums it up. The
CLI only gathers a `Request` and a `Placement` (optimize/request.py) and renders what the
`Reporter` callbacks and the returned summary tell it."""

from __future__ import annotations

import contextlib
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ipo_cli import __version__
from ipo_cli.data import sampling
from ipo_cli.data.folders import normalize_name
from ipo_cli.errors import IpoError
from ipo_cli.optimize import strategies
from ipo_cli.optimize.loop import LoopSettings
from ipo_cli.optimize.plan import described_subset, ensure_pulled, model_plan
from ipo_cli.optimize.request import Placement, Request, saved_settings


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


def versions() -> dict:
    import importlib.metadata as md

    out = {"ipo": __version__}
    for pkg in ("torch", "open_clip_torch", "llama_cpp_python", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def run(request: Request, placement: Placement, out: Path, reporter: Reporter | None = None, *,
        resume: bool = False, force: bool = False) -> dict:
    """The whole `ipo optimize`: `request` decides what is computed (and is saved with the
    run), `placement` where and how fast (it is not: it may differ on resume)."""
    from ipo_cli import cache
    from ipo_cli.clip import evaluate
    from ipo_cli.clip.model import load_clip, set_cpu_threads
    from ipo_cli.clip.spec import parse_clip
    from ipo_cli.llm import captions as describe
    from ipo_cli.llm.loading import load_llm
    from ipo_cli.optimize import history_md as report
    from ipo_cli.optimize.loop import ClipScorer, Optimizer
    from ipo_cli.optimize.run_folder import RunFolder, compare_settings

    reporter = reporter or Reporter()
    started = time.perf_counter()
    if resume:
        folder, saved = RunFolder.open(out, lock=True)
        diffs = compare_settings(saved_settings(saved.get("request", {})), request.settings())
        if diffs:
            raise IpoError(f"cannot resume {out} with different settings ({'; '.join(diffs)})",
                           "resume with the run's own settings (just --resume DIR), or start a new run with --out")
        folder.records()  # a damaged history is reported now, not after the models are loaded
    else:
        RunFolder.check_target(out, force)
    if request.select not in ("train", "val"):
        raise IpoError(f"--select must be train or val, not {request.select!r}",
                       "--pool pareto keeps the Pareto frontier; --select then picks from it on train or val"
                       if request.select == "pareto" else None)
    strategies.check(request)
    placement.check()
    full, train, val = sampling.sample(request)
    held_out = sampling.held_out_set(request, full) if request.base_novel else None  # checked before any work
    for data in (full, train, val, held_out):  # --image-loading over the source's own way
        if data is not None and request.image_loading:
            data.image_loading = request.image_loading
    if held_out is not None and [normalize_name(n) for n in held_out.classnames] != \
            [normalize_name(n) for n in full.classnames]:
        raise IpoError("--base-novel: the held-out images have other classes than the training images "
                       f"({len(held_out.classnames)} vs {len(full.classnames)}, or another order)",
                       "pass --test-images with the same class folders (or the same --classes file)")
    if resume:  # before any model is loaded: every saved training image must be drawn again
        drawn = {"train": [[str(p), label] for p, label in zip(train.paths, train.labels)]}
        _refuse_changed_sample(out, saved.get("split"), drawn, both_ways=False)
    use_lmm = (request.lmm or "").lower() != "none"
    models_plan = model_plan(request, use_lmm, placement.gpu_layers)
    gpu_layers = models_plan.get("gpu_layers")  # resolved once, for every llama.cpp model of the run
    threads = _threads(placement)
    plan = {
        "images": len(full.items), "classes": len(full.classnames), "train_classes": len(train.classnames),
        "shots": request.shots, "train_images": len(train.items), "val_images": len(val.items) if val else 0,
        "steps": request.steps, "candidates": request.candidates,
        "llm_calls_max": request.steps * request.candidates,
        "captions": 0,
        **models_plan,
        "llm_server": bool(request.llm_url),
        "parallel": placement.parallel if request.llm_url else 1,  # None: what the server reports
        **_llm_path(request, placement, threads),
        "clip": request.clip, "out": str(out),
        "strategy": {"feedback": request.feedback, "history_order": request.history_order, "pool": request.pool},
        "feedback_tokens": strategies.feedback_tokens(request.feedback),
        "sample": sampling.sample_source(request),
    }
    described = described_subset(request, plan, len(train.items)) if use_lmm else []
    plan["captions"] = len(described)
    plan["captions_of"] = len(train.items)
    reporter.plan(plan)
    if plan.get("gpu_layers_note"):
        reporter.warn(plan["gpu_layers_note"])
    if not request.llm and not request.llm_url:
        ensure_pulled(plan["llm"], "llm", placement.offline, reporter.pull)
    if use_lmm and not request.lmm and not request.lmm_url:
        ensure_pulled(plan["lmm"], "lmm", placement.offline, reporter.pull)

    from ipo_cli.gates import http as http_gate
    from ipo_cli.llm.openai_http import api_key_from_env

    for flag, url in (("--llm-url", request.llm_url), ("--lmm-url", request.lmm_url)):
        if url:  # a port that is wrong is one line now, not after CLIP has loaded (a bad key first)
            api_key_from_env()
            http_gate.probe(url, flag)
    root = cache.cache_root(placement.cache_dir)
    spec = parse_clip(request.clip, request.clip_weights)
    with reporter.status(f"loading CLIP {spec.identity}"):
        clip = load_clip(spec, placement.device)
    set_cpu_threads(threads.threads)  # torch's share: the same cores llama.cpp gets, in turn, never more
    store = cache.Store(root, "embeddings")
    clip.remember(store)  # text embeddings on disk too: later evals and reports need no model
    sets: list[Any] = []
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
    image_descriptions: list[str | None] = []
    lmm_identity = "none"
    if use_lmm:
        backend: Any
        if plan["lmm"] == "clip":  # --lmm clip: the run's own CLIP describes (clip/attributes.py)
            from ipo_cli.clip.attributes import ClipAttributes

            backend = ClipAttributes(clip, store, exclude=train_set.dataset.classnames)
        else:
            with reporter.status("loading the multimodal model"):
                backend = describe.load_vision(plan["lmm"] if not request.lmm_url else None,
                                               Path(request.mmproj) if request.mmproj else None,
                                               request.handler, request.lmm_url, request.lmm_model,
                                               gpu_layers=gpu_layers, n_threads=threads.threads)
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
        by_path = {str(c.path): c.caption for c in captions.captions}
        image_descriptions = [by_path.get(str(p)) for p in train_set.dataset.paths]  # the scorer's order

    with reporter.status("loading the LLM"):
        llm = load_llm(plan["llm"] if not request.llm_url else None, request.llm_url, request.llm_model,
                       request.n_ctx, n_threads=threads.threads, gpu_layers=gpu_layers, batch=placement.batch,
                       fit_threads=not placement.threads)
    models = {"llm": llm.identity, "lmm": lmm_identity, "clip": clip.identity}
    config: dict[str, Any] = {
        "ipo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "request": request.settings(),
        "models": models,
        "versions": versions(),
        "classnames": full.classnames,
        "train_classnames": train_set.dataset.classnames,
        "split": {name: [[str(p), int(label)] for p, label in zip(s.dataset.paths, s.labels)]
                  for name, s in (("train", train_set), ("val", val_set)) if s is not None},
        "descriptions": described_images,  # what the LLM was shown, per image (ipo report)
        "image_loading": train.image_loading,  # how its images were decoded (ipo report decodes them so)
        # which path made the answers (a batch gives other answers than one by one; both valid)
        "llm_answers": {"batch": bool(placement.batch) and not request.llm_url, "threads": threads.threads},
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
    if hasattr(llm, "parallel"):  # a server: most requests of a step in flight (--parallel; None: its slots)
        llm.parallel = placement.parallel
    optimizer = Optimizer(llm, scorer, folder, loop, descriptions, cache.Store(root, "generations"),
                          on_step=reporter.step, image_descriptions=image_descriptions)
    result = optimizer.run()
    if result.interrupted and not result.ranking:
        raise KeyboardInterrupt  # stopped before even the baseline was scored: nothing to write
    name = Path(request.images).resolve().name
    report.write_outputs(folder, result, name, clip.identity, request.select,
                         {"run": str(folder.path), "models": models, "seed": request.seed, "pool": request.pool})
    if not result.interrupted:
        from ipo_cli.explain import report as insight

        try:  # the interpretability report: plots and HTML under RUN/report/
            insight.write(insight.build(folder.path, clip=clip, train=train_set), folder.path / "report")
        except (IpoError, OSError, ValueError) as exc:
            reporter.warn(f"the report could not be written: {exc}")
    summary = summarize(result, folder, models, time.perf_counter() - started)
    summary["plan"] = plan
    if request.base_novel and not result.interrupted:
        test = held_out if held_out is not None else sampling.held_out_set(request, full)
        with reporter.progress("embedding test images", len(test.items)) as advance:
            test_set = evaluate.embed_dataset(clip, test, store, progress=advance)
        from ipo_cli.data.prompts import paper_prompt, parse_prompts

        paper = paper_prompt(request.dataset, request.shots)  # the paper's own prompt, scored beside it
        evaluation = evaluate.evaluate(clip, test_set, parse_prompts([result.best["template"]]) + ([paper] if paper else []),
                                       baseline=request.baseline or evaluate.DEFAULT_BASELINE, base_novel=True,
                                       seed=request.seed)
        folder.write_json("eval_base_novel.json", evaluation.to_json())
        best_row, base_row = evaluation.rows[0], evaluation.rows[-1]
        summary["base_novel"] = {
            "test_images": evaluation.n_images,
            "best": {"base": best_row.base, "novel": best_row.novel, "hm": best_row.hm},
            "baseline": {"base": base_row.base, "novel": base_row.novel, "hm": base_row.hm},
            "hm_delta": best_row.delta, "hm_delta_ci": [best_row.delta_low, best_row.delta_high],
        }
        if paper:
            row = evaluation.rows[1]
            summary["base_novel"]["paper"] = {"template": paper.templates[0], "base": row.base, "novel": row.novel,
                                              "hm": row.hm}
    folder.write_json("summary.json", summary)
    return summary


def _threads(placement: Placement):
    """--threads, else the physical cores this process may use (llm/threads.py)."""
    from ipo_cli.llm.threads import Cores, usable_cores

    if placement.threads:
        return Cores(placement.threads, "--threads")
    return usable_cores()


def _llm_path(request: Request, placement: Placement, threads) -> dict:
    """For the plan: how an in-process llama.cpp model answers a step (a server decides itself)."""
    if request.llm_url:
        return {}
    how = "one batch per step" if placement.batch and request.candidates > 1 else "one answer at a time"
    fitted = "" if placement.threads or threads.threads < 2 else ", fewer while other processes keep cores busy"
    return {"llm_answers": f"{how}, {threads.threads} thread{'s' if threads.threads != 1 else ''}: {threads.why}{fitted}",
            "llm_batch": bool(placement.batch), "llm_threads": threads.threads}


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
        old = {str(p): label for p, label in (e for e in before if isinstance(e, list) and len(e) == 2)}
        new = {p: label for p, label in items}
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
        "valid_candidates": sum(1 for r in state.valid if r["step"] > 0),
        "tokens": state.usage.to_json(),
        "seconds": round(seconds, 2),
        "models": models,
    }
