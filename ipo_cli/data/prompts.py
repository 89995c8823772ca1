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
      "classes": ["t-shirt", ...],             # the classes it was optimised for (since ipo 0.x)
      "clip_spec": {"clip": "ViT-B-16:openai", "clip_weights": null},  # how to load that CLIP
      "meta": {...}                            # free-form: run folder, settings
    }
Extra keys are allowed; a reader ignores what it does not know. `classes` and
`clip_spec` let `ipo classify` and `ipo eval` default to what the run used (`read_info`);
files written before them still work with `--classes` and `--clip`.

Anywhere a prompts file is taken, `paper:DATASET` names the prompt the IPO paper prints for
a dataset (data/paper_prompts.json: Table 3, 1 shot; `paper:DATASET:16`, Table 17), and a
`.txt` file is read as one template per line (CLIP_benchmark's
`zeroshot_classification_templates.txt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipo_cli.clip.scoring import Prompt, check_template
from ipo_cli.clip.spec import DEFAULT_CLIP
from ipo_cli.errors import IpoError
from ipo_cli.gates import json_in

SCHEMA = "ipo.prompts/v1"
PAPER_PREFIX = "paper:"
PAPER_FILE = Path(__file__).with_name("paper_prompts.json")
# CLIP_benchmark looks a `vtab/NAME`, `wds/NAME` or `tfds/NAME` key up as itself, then as
# NAME (clip_benchmark/datasets/builder.py, build_dataset: keys_to_lookup)
PREFIXES = ("wds/", "vtab/", "tfds/")


def lookup_keys(key: str) -> list[str]:
    """The keys CLIP_benchmark tries for a dataset name, in its order."""
    if key.startswith(PREFIXES):
        return [key, key.split("/", 1)[1]]
    return [key]


@dataclass
class PromptsInfo:
    """What a prompts file says about where it belongs (ipo's prompts.json only)."""

    classes: list[str] | None = None
    clip: str | None = None  # the --clip value the prompts were optimised with
    clip_weights: str | None = None
    name: str | None = None
    from_run: bool = False  # an ipo prompts.json (best first)


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
    for candidate in lookup_keys(key):
        if candidate.lower() in lookup:
            return {lookup[candidate.lower()]: data[lookup[candidate.lower()]]}
    from ipo_cli.errors import close_matches

    raise IpoError(f"{source} has no dataset {key!r}" + close_matches(key, list(data)),
                   f"choose one of: {', '.join(list(data)[:12])}")


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
    from ipo_cli.data.templates import looks_like_template

    return all(isinstance(v, list) and v and all(isinstance(t, str) and not looks_like_template(t) for t in v)
               for v in data.values())


def _with_ensemble(templates: list[str], ensemble_name: str) -> list[Prompt]:
    rows = [Prompt(name=t, templates=[t]) for t in dict.fromkeys(templates)]
    if len(rows) > 1:
        rows.append(Prompt(name=ensemble_name, templates=list(dict.fromkeys(templates))))
    return rows


def load_source(path: Path | str) -> tuple[Any, str]:
    """The parsed content of a prompts file and how to name it in messages: a JSON file,
    a `.txt` file of one template per line, or `paper:DATASET`."""
    text_path = str(path)
    if text_path.startswith(PAPER_PREFIX):
        return paper_prompts(text_path[len(PAPER_PREFIX):]), f"the paper's prompts for {text_path[len(PAPER_PREFIX):]}"
    from ipo_cli.gates.paths import check_path

    path = check_path(path, "prompts file")  # NUL, too long, a FIFO or a device: one line
    if not path.is_file():
        raise IpoError(f"prompts file {path} does not exist",
                       "pass a JSON prompts file, a .txt file of templates, or paper:DATASET")
    source = f"prompts file {path}"
    if path.suffix.lower() == ".txt":
        from ipo_cli.data.folders import read_text

        # CLIP_benchmark's zeroshot_classification_templates.txt: one template per line,
        # each stripped (clip_benchmark/datasets/builder.py, build_wds_dataset)
        text = read_text(path, "prompts file")
        return [line.strip() for line in text.splitlines() if line.strip()], source
    return json_in.read_json(path, "prompts file"), source


def read_prompts(path: Path | str, dataset: str | None = None) -> list[Prompt]:
    data, source = load_source(path)
    return parse_prompts(select_dataset(data, dataset, source), source)


def read_info(path: Path | str) -> PromptsInfo:
    """The classes and CLIP an ipo prompts.json was made for; empty for other files."""
    data, source = load_source(path)
    if not (isinstance(data, dict) and str(data.get("schema", "")).startswith("ipo.prompts/")):
        return PromptsInfo()
    classes = data.get("classes")
    if classes is not None and not (isinstance(classes, list) and classes
                                    and all(isinstance(c, str) and c.strip() for c in classes)):
        raise IpoError(f"{source}: 'classes' must be a list of class names")
    spec = found if isinstance(found := data.get("clip_spec"), dict) else {}
    clip, weights = spec.get("clip"), spec.get("clip_weights")
    if not isinstance(clip, str) or not clip:
        clip = None
    if not isinstance(weights, str) or not weights:
        weights = None
    return PromptsInfo(classes, clip, weights, data.get("name") if isinstance(data.get("name"), str) else None, True)


def resolve_clip(info: PromptsInfo, clip: str | None, clip_weights: Path | str | None,
                 default: str = DEFAULT_CLIP) -> tuple[str, str | None]:
    """--clip and --clip-weights, defaulting to the CLIP the prompts were optimised with; a
    flag that names another is an error that says which differs."""
    if info.clip is None:
        return clip or default, str(clip_weights) if clip_weights else None
    if clip is not None and clip.strip() != info.clip:
        raise IpoError(f"--clip {clip} differs from the CLIP these prompts were optimised with ({info.clip})",
                       "leave out --clip to use the run's, or `ipo export` the prompts to score them with another")
    if clip_weights is not None and info.clip_weights is not None \
            and Path(clip_weights).resolve() != Path(info.clip_weights).resolve():
        raise IpoError(f"--clip-weights {clip_weights} differs from the checkpoint these prompts were optimised "
                       f"with ({info.clip_weights})", "leave out --clip-weights to use the run's")
    weights = str(clip_weights) if clip_weights is not None else info.clip_weights
    return info.clip, weights


def resolve_classes(info: PromptsInfo, classes: list[str] | None, flag: str = "--classes") -> list[str] | None:
    """The class names to use: those given, else the run's; both, and different, is an error."""
    if classes is None or info.classes is None:
        return classes if classes is not None else info.classes
    from ipo_cli.data.folders import code_points, normalize_name

    given, saved = [normalize_name(c) for c in classes], [normalize_name(c) for c in info.classes]
    if given != saved:  # non-ASCII names as code points: two that look alike are told apart
        extra = [c if c.isascii() else code_points(c) for c in classes if normalize_name(c) not in saved]
        missing = [c if c.isascii() else code_points(c) for c in info.classes if normalize_name(c) not in given]
        what = (f"it adds {', '.join(extra[:3])}" if extra else "") + ("; " if extra and missing else "") + \
            (f"it lacks {', '.join(missing[:3])}" if missing else "") or "the order differs"
        raise IpoError(f"{flag} differs from the classes these prompts were optimised for ({what})",
                       "leave it out to use the run's classes, or `ipo export` the prompts for other classes")
    return classes


def paper_prompts(dataset: str) -> list[str]:
    """The prompt the IPO paper prints for a dataset (data/paper_prompts.json): `DATASET`
    its 1-shot prompt (Table 3), `DATASET:16` its 16-shot one (Table 17). A template list,
    so that any `--dataset` key picks it."""
    name, _, shots_text = dataset.partition(":")
    if shots_text not in ("", "1", "16"):
        raise IpoError(f"paper:{dataset}: the paper prints prompts for 1 and 16 shots, not {shots_text!r}",
                       f"write paper:{name} (1 shot) or paper:{name}:16")
    entry = _paper_entry(name, int(shots_text or 1))
    return [entry["template"]]


def _paper_entry(dataset: str, shots: int) -> dict:
    table = json_in.read_json(PAPER_FILE, "ipo's paper prompts")["datasets"]
    from ipo_cli.data import coop

    lookup = {k.lower(): k for k in table}
    try:
        name = coop.get(dataset).name
    except IpoError:
        name = dataset
    key = lookup.get(name.lower())
    if key is None:
        raise IpoError(f"ipo holds no prompt of the paper for {dataset!r}",
                       f"the paper prints prompts for: {', '.join(table)}")
    return next(e for e in table[key] if e["shots"] == shots)


def to_clip_benchmark(name: str, templates: list[str]) -> dict[str, list[str]]:
    """The CLIP_benchmark template file for these templates: one `{c}` each, other braces
    doubled (data/templates.py, `str_format`)."""
    from ipo_cli.data.templates import str_format

    return {name: [str_format(t) for t in templates]}


def paper_prompt(dataset: str | None, shots: int = 1) -> Prompt | None:
    """The paper's prompt for a dataset (its 16-shot one for 16 shots, else its 1-shot
    one), for `ipo bench`'s row; None where the paper prints none."""
    if not dataset:
        return None
    try:
        entry = _paper_entry(dataset, 16 if shots == 16 else 1)
    except IpoError:
        return None
    return Prompt(name=f"paper ({entry['source']}): {entry['template']}", templates=[entry["template"]])
