"""Prompt files: what `ipo eval` reads and `ipo optimize` writes.

Three formats are read:
- a JSON list of templates: `["a photo of a {}.", "a {} texture."]`;
- a CLIP_benchmark template file: `{"name": ["a photo of a {c}.", ...]}` (templates) or
  `{"name": {"class": ["sentence", ...]}}` (per-class prompts, CuPL style);
- ipo's own `prompts.json` (schema below), written by `ipo optimize`.

ipo's schema, version 1 (`"schema": "ipo.prompts/v1"`):
    {
      "schema": "ipo.prompts/v1",
      "name": "fashion",                       # dataset or run name
      "clip": "ViT-B-16:openai",               # model the scores were measured with
      "best": "Identify the <CLASS> ...",      # the selected template
      "prompts": [                             # best first
        {"template": "...", "rank": 1, "acc1": 71.2, "loss": 1.03, "split": "train",
         "step": 12},
        ...
      ],
      "meta": {...}                            # free-form: run folder, settings
    }
Extra keys are allowed; a reader ignores what it does not know.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ipo_cli.errors import IpoError
from ipo_cli.clip.scoring import Prompt, check_template

SCHEMA = "ipo.prompts/v1"


def _templates(items: Any, where: str) -> list[str]:
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise IpoError(f"{where} must be a list of template strings")
    if not items:
        raise IpoError(f"{where} has no templates", "add at least one template such as \"a photo of a {}.\"")
    return [check_template(t, f" in {where}") for t in items]


def select_dataset(data: Any, key: str | None, source: str) -> Any:
    """A CLIP_benchmark file holds many datasets (its en_zeroshot_classification_templates.json
    has 33): `key` (`--dataset`) picks one; other files pass through."""
    if key is None or not isinstance(data, dict) or str(data.get("schema", "")).startswith("ipo.prompts/") \
            or not all(isinstance(v, (list, dict)) for v in data.values()) or _is_cupl(data):
        return data
    lookup = {k.lower(): k for k in data}
    if key.lower() not in lookup:
        from ipo_cli.errors import close_matches

        raise IpoError(f"{source} has no dataset {key!r}" + close_matches(key, list(data)),
                       f"choose one of: {', '.join(list(data)[:12])}")
    return {lookup[key.lower()]: data[lookup[key.lower()]]}


def parse_prompts(data: Any, source: str = "prompts file") -> list[Prompt]:
    """The prompts to evaluate: one per template, and one per ensemble or per-class set."""
    if isinstance(data, list):
        templates = _templates(data, source)
        return _with_ensemble(templates, "ensemble")
    if not isinstance(data, dict) or not data:
        raise IpoError(
            f"{source} holds no templates",
            "give a JSON list of templates, a CLIP_benchmark template file or an ipo prompts.json",
        )
    if str(data.get("schema", "")).startswith("ipo.prompts/"):
        if data["schema"] != SCHEMA:
            raise IpoError(f"{source} has schema {data['schema']!r}; this ipo reads {SCHEMA}", "upgrade ipo")
        entries = data.get("prompts")
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "template" in e for e in entries):
            raise IpoError(f"{source} lists no prompts", "its 'prompts' must be a list of {\"template\": ...}")
        templates = _templates([e["template"] for e in entries], source)
        return _with_ensemble(templates, f"{data.get('name') or 'ipo'} ensemble")
    if _is_cupl(data):
        # CuPL's own files (github.com/sarahpratt/CuPL): {class name: [sentences]}, no
        # dataset key and no placeholder: one per-class prompt set
        return [Prompt(name=Path(str(source).split()[-1]).stem or "per-class",
                       per_class={c: list(v) for c, v in data.items()})]
    prompts: list[Prompt] = []
    for name, value in data.items():
        if isinstance(value, list):
            rows = _with_ensemble(_templates(value, f"{source} [{name}]"), name)
            for row in rows:
                row.dataset = name  # every row says which dataset of the file it is
            prompts.extend(rows)
        elif isinstance(value, dict):
            per_class: dict[str, list[str]] = {}
            for classname, sentences in value.items():
                if isinstance(sentences, str):
                    sentences = [sentences]
                if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
                    raise IpoError(f"{source} [{name}][{classname}] must be a non-empty list of sentences")
                per_class[classname] = sentences
            if not per_class:
                raise IpoError(f"{source} [{name}] has no classes")
            prompts.append(Prompt(name=name, per_class=per_class, dataset=name))
        else:
            raise IpoError(
                f"{source} [{name}] is neither a list of templates nor a mapping of class to sentences"
            )
    return prompts


def _is_cupl(data: dict) -> bool:
    from ipo_cli.clip.scoring import placeholder_count

    return all(isinstance(v, list) and v and all(isinstance(t, str) and placeholder_count(t) == 0 for t in v)
               for v in data.values())


def _with_ensemble(templates: list[str], ensemble_name: str) -> list[Prompt]:
    rows = [Prompt(name=t, templates=[t]) for t in dict.fromkeys(templates)]
    if len(rows) > 1:
        rows.append(Prompt(name=ensemble_name, templates=list(dict.fromkeys(templates))))
    return rows


def read_prompts(path: Path, dataset: str | None = None) -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise IpoError(f"prompts file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IpoError(f"prompts file {path} is not valid JSON: {exc}") from None
    source = f"prompts file {path}"
    return parse_prompts(select_dataset(data, dataset, source), source)


def to_clip_benchmark(name: str, templates: list[str]) -> dict[str, list[str]]:
    """The CLIP_benchmark template file for these templates (`{c}` placeholders)."""
    from ipo_cli.clip.scoring import fill

    return {name: [fill(t, "{c}") for t in templates]}
