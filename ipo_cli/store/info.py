"""`ipo models show NAME`: everything ipo knows about one model, in one record.

`ipo models list` is one short line per model (as `ollama list`); the long facts (the
note, the hub repository and revision, each file's size and sha256, where the catalogue's
facts were checked) are here, as `ollama show` and `llm-gguf`'s manifest keep them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ipo_cli.errors import NotFound, close_matches


def model_info(name: str) -> dict[str, Any]:
    """The catalogue entry of `name` (if it is one) and its installed copy (if pulled or
    added); unknown names raise NotFound with the close matches."""
    from ipo_cli.store.entries import load_catalogue
    from ipo_cli.store.local import Manifest, models_dir

    catalogue = load_catalogue()
    installed = Manifest().load()
    entry, local = catalogue.get(name), installed.get(name)
    if entry is None and local is None:
        raise NotFound(f"unknown model {name!r}" + close_matches(name, list(catalogue) + list(installed)),
                       "see: ipo models list")
    info: dict[str, Any] = {"name": name, "kind": (entry or local).kind, "installed": local is not None}  # type: ignore[union-attr]
    if entry is not None:
        info["catalogue"] = {
            "note": entry.note,
            "license": entry.license,
            "n_ctx": entry.n_ctx,
            "handler": entry.handler,
            "default_for": list(entry.default_for),
            "repo": entry.repo,
            "revision": entry.revision,
            "files": {role: {"file": entry.source.get("file" if role == "model" else role),
                             **entry.files.get(role, {})}
                      for role in (["model", "mmproj"] if entry.kind == "lmm" else ["model"])},
            "pinned": entry.pinned,
            "size": entry.size,
            "cite": list(entry.cite),
        }
    if local is not None:
        info["local"] = {**asdict(local), "store": str(models_dir())}
    return info
