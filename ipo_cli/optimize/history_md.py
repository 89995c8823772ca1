"""What a finished (or stopped) run leaves for people and for other tools:
history.md, prompts.json (read by `ipo eval`) and a CLIP_benchmark template file."""

from __future__ import annotations

from pathlib import Path

from ipo_cli.data.prompts import SCHEMA, to_clip_benchmark
from ipo_cli.errors import IpoError
from ipo_cli.optimize.loop import LoopResult
from ipo_cli.optimize.run_folder import RunFolder

TOP_K = 10


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def history_markdown(records: list[dict], result: LoopResult, select: str) -> str:
    lines = ["# Prompt optimisation history", ""]
    steps = [r for r in records if r.get("type") == "step"]
    candidates = [r for r in records if r.get("type") == "candidate"]
    for summary in steps:
        step = summary["step"]
        title = "Step 0 (baseline)" if step == 0 else f"Step {step}"
        lines += [f"## {title}", ""]
        if step:
            lines += [f"Meta-prompt: {summary['meta_prompt_tokens']} tokens, with {summary['descriptions_used']} "
                      f"image descriptions ({summary['descriptions_left_out']} left out to fit the context). "
                      f"This step's LLM calls: {summary['prompt_tokens']} prompt tokens, "
                      f"{summary['reused_tokens']} reused from the cached prefix, {summary['evaluated_tokens']} evaluated.", ""]
        lines += ["| # | prompt | accuracy | loss | result |", "|---|---|---:|---:|---|"]
        for r in (c for c in candidates if c["step"] == step):
            acc = f"{r['accuracy']:.2f}" if r["valid"] else ""
            loss = f"{r['loss']:.3f}" if r["valid"] else ""
            shown = r["template"] if r["template"] is not None else r["raw"]
            lines.append(f"| {r['attempt']}.{r['index']} | {_cell(shown)} | {acc} | {loss} | "
                         f"{'valid' if r['valid'] else 'rejected: ' + _cell(r['reason'])} |")
        marker = " (improved)" if summary["improved"] else ""
        lines += ["", f"Best so far{marker}: `{summary['best_template']}`, accuracy "
                      f"{summary['best_accuracy']:.2f}, loss {summary['best_loss']:.3f}", ""]
    lines += ["## Final ranking", "", f"Selected on the {select} split; the baseline is marked.", ""]
    val = select == "val"
    lines += ["| rank | prompt | train accuracy | train loss |" + (" val accuracy | val loss |" if val else ""),
              "|---:|---|---:|---:|" + ("---:|---:|" if val else "")]
    for rank, r in enumerate(result.ranking[:TOP_K], 1):
        name = _cell(r["template"]) + (" **(baseline)**" if r["step"] == 0 else "")
        extra = f" {r['val_accuracy']:.2f} | {r['val_loss']:.3f} |" if val else ""
        lines.append(f"| {rank} | {name} | {r['accuracy']:.2f} | {r['loss']:.3f} |{extra}")
    if result.baseline and result.baseline not in result.ranking[:TOP_K]:
        b = result.baseline
        place = str(result.ranking.index(b) + 1) if b in result.ranking else "—"  # --pool pareto may drop it
        lines.append(f"| {place} | {_cell(b['template'])} **(baseline)** | "
                     f"{b['accuracy']:.2f} | {b['loss']:.3f} |")
    return "\n".join(lines) + "\n"


def prompts_document(result: LoopResult, name: str, clip: str, select: str, meta: dict,
                     run_config: dict | None = None) -> dict:
    prompts = []
    for rank, r in enumerate(result.ranking[:TOP_K], 1):
        entry = {"template": r["template"], "rank": rank, "acc1": r["accuracy"], "loss": r["loss"],
                 "split": "train", "step": r["step"], "baseline": r["step"] == 0}
        if select == "val":
            entry.update(val_acc1=r["val_accuracy"], val_loss=r["val_loss"])
        prompts.append(entry)
    document = {"schema": SCHEMA, "name": name, "clip": clip, "best": result.best["template"],
                "selected_on": select, "prompts": prompts, "meta": meta}
    if run_config:
        # what `ipo classify` and `ipo eval` default to (data/prompts.py, read_info)
        request = run_config.get("request") or {}
        if run_config.get("classnames"):
            document["classes"] = list(run_config["classnames"])
        if request.get("clip"):
            weights = request.get("clip_weights")
            document["clip_spec"] = {"clip": request["clip"],
                                     "clip_weights": str(Path(weights).resolve()) if weights else None}
    return document


def write_outputs(folder: RunFolder, result: LoopResult, name: str, clip: str, select: str, meta: dict) -> None:
    folder.write_text("history.md", history_markdown(folder.records(), result, select))
    try:  # opened as every reader opens it: each field of its type (run_folder.SavedConfig)
        run_config: dict | None = RunFolder.open(folder.path)[1]
    except IpoError:
        run_config = None
    document = prompts_document(result, name, clip, select, meta, run_config)
    folder.write_json("prompts.json", document)
    folder.write_json("templates_clip_benchmark.json",
                      to_clip_benchmark(name, [p["template"] for p in document["prompts"]]))
