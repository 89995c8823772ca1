"""Prompts back into the field's tools: `ipo export`.

Two targets:
- CLIP_benchmark's `--custom_template_file` (LAION-AI/CLIP_benchmark README, "custom
  templates"; clip_benchmark/datasets/builder.py reads it as `{dataset: templates}`, the
  templates a list with `{c}` where the class goes, or CuPL's form `{dataset: {class:
  [sentences]}}`, as its datasets/cupl_prompts.json);
- CuPL's own prompt files (sarahpratt/CuPL, e.g. the `*_prompts_full.json` files its
  README links): `{class name: [sentences]}`.

From an ipo prompts.json the run's best K prompts are taken (best first, `top`); from
another prompts file its first K templates; per-class prompts are exported as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipo_cli.clip.scoring import Prompt
from ipo_cli.data.templates import fill, str_format
from ipo_cli.errors import IpoError

TARGETS = ("clip_benchmark", "cupl")


@dataclass
class Exported:
    document: dict
    key: str  # the dataset key written (CLIP_benchmark) or the prompts' name
    count: int  # templates, or classes for per-class prompts


def chosen(prompts: list[Prompt], top: int) -> tuple[list[str], dict[str, list[str]] | None]:
    """The templates to export (the first `top`), or the first per-class set."""
    per_class = next((p.per_class for p in prompts if p.per_class is not None), None)
    if per_class is not None:
        return [], per_class
    templates = list(dict.fromkeys(p.templates[0] for p in prompts if p.kind == "template"))
    if not templates:
        raise IpoError("the prompts file holds no template to export")
    return templates[:top], None


def export(prompts: list[Prompt], key: str, to: str = "clip_benchmark", top: int = 1,
           classnames: list[str] | None = None) -> Exported:
    if to not in TARGETS:
        raise IpoError(f"--to must be one of {', '.join(TARGETS)}, not {to!r}")
    if top < 1:
        raise IpoError(f"--top must be at least 1, not {top}")
    templates, per_class = chosen(prompts, top)
    if to == "clip_benchmark":
        if per_class is not None:
            return Exported({key: {c: list(v) for c, v in per_class.items()}}, key, len(per_class))
        # CLIP_benchmark fills a list of templates with `template.format(c=classname)` and
        # uses a dict's per-class sentences as they are (LAION-AI/CLIP_benchmark
        # clip_benchmark/metrics/zeroshot_classification.py, zero_shot_classifier): one {c},
        # every other brace doubled, so that it scores the very text ipo scored
        return Exported({key: [str_format(t) for t in templates]}, key, len(templates))
    if per_class is not None:
        return Exported({c: list(v) for c, v in per_class.items()}, key, len(per_class))
    if not classnames:
        raise IpoError("CuPL's files hold sentences per class, and these prompts name no classes",
                       "pass --classes FILE (a run's prompts.json records its own)")
    # CuPL's files hold finished sentences (used as they are): the text ipo scores per class
    return Exported({c: [fill(t, c) for t in templates] for c in classnames}, key, len(classnames))
