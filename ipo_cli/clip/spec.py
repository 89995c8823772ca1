"""What `--clip` names, and the identity that names those weights exactly.

`--clip` takes an open_clip pretrained tag (`ViT-B-16:openai`), `hf-hub:ORG/NAME`, an
architecture name with `--clip-weights FILE` (a local checkpoint), or a model config
JSON file (a custom architecture, random weights unless a checkpoint is given).

The identity goes into every cache key and run config, so the warm path (clip/warm.py,
without open_clip) and the cold one (clip/model.py) must agree on it: both get it from
`parse_clip`, the warm path without asking open_clip whether the names exist.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ipo_cli.errors import IpoError, close_matches
from ipo_cli.gates import json_in

DEFAULT_CLIP = "ViT-B-16:openai"


@dataclass(frozen=True)
class ClipSpec:
    """What to load. `identity` names the weights exactly, for cache keys and run configs."""

    arch: str
    pretrained: str | None = None  # an open_clip tag
    weights: Path | None = None  # a local checkpoint file
    hf_hub: str | None = None  # "ORG/NAME"
    config: Path | None = None  # a model config JSON file
    identity: str = ""


def parse_clip(model: str, weights: Path | str | None = None, *, check_names: bool = True) -> ClipSpec:
    """Turn `--clip` / `--clip-weights` into a ClipSpec. With `check_names` the architecture
    and pretrained tag are checked against open_clip (which imports torch); without, only
    what can be told from the text and the files."""
    from ipo_cli.cache import key_of, sha256_file

    model = model.strip()
    weights = Path(weights) if weights else None
    if weights is not None and not weights.is_file():
        raise IpoError(f"checkpoint file {weights} does not exist", "pass the path of a saved open_clip state dict")
    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:"):]
        if repo.count("/") != 1:
            raise IpoError(f"--clip {model!r} is not of the form hf-hub:ORG/NAME")
        return ClipSpec(arch=model, hf_hub=repo, identity=model)
    config = None
    if model.endswith(".json"):
        config = Path(model)
        if not config.is_file():
            raise IpoError(f"model config {config} does not exist")
        try:
            cfg = json_in.read_json(config, "model config")
            if not (isinstance(cfg, dict) and isinstance(cfg.get("embed_dim"), int)
                    and not isinstance(cfg.get("embed_dim"), bool)
                    and isinstance(cfg.get("vision_cfg"), dict) and isinstance(cfg.get("text_cfg"), dict)):
                raise ValueError("not an open_clip config")
        except (ValueError, IpoError):
            raise IpoError(
                f"model config {config} is not an open_clip model config",
                "it needs embed_dim, vision_cfg and text_cfg, like open_clip's model_configs/*.json",
            ) from None
        arch = config.stem
    else:
        arch, _, tag = model.partition(":")
        if check_names:
            _check_arch(arch)
        if tag and weights is None:
            if check_names:
                _check_tag(arch, tag)
            return ClipSpec(arch=arch, pretrained=tag, identity=f"{arch}:{tag}")
        if tag and weights is not None:
            raise IpoError("give either a pretrained tag (--clip ARCH:TAG) or --clip-weights, not both")
    if weights is not None:
        return ClipSpec(arch=arch, weights=weights, config=config,
                        identity=f"{arch}:sha256={sha256_file(weights)[:16]}")
    if config is not None:
        # Random weights with a fixed seed: reproducible, so still cacheable.
        return ClipSpec(arch=arch, config=config, identity=f"{arch}:random-seed0:{key_of(config.read_text())[:16]}")
    raise IpoError(
        f"--clip {model!r} names an architecture but no weights",
        f"use a pretrained tag such as {arch}:openai, or add --clip-weights FILE",
    )


def _check_arch(arch: str) -> None:
    import open_clip

    if arch not in open_clip.list_models():
        raise IpoError(
            f"unknown CLIP model {arch!r}" + close_matches(arch, open_clip.list_models()),
            "see open_clip.list_models() / open_clip.list_pretrained() for names",
        )


def _check_tag(arch: str, tag: str) -> None:
    import open_clip

    tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    if tag not in tags:
        raise IpoError(
            f"open_clip has no pretrained weights {tag!r} for {arch}" + close_matches(tag, tags),
            f"known tags for {arch}: {', '.join(tags) or 'none'}",
        )


def light_identity(model: str, weights: Path | str | None = None) -> str | None:
    """The identity `parse_clip` gives, without open_clip: None when it cannot be told
    (a bare architecture, a malformed name); the cold path then reports the problem."""
    try:
        return parse_clip(model, weights, check_names=False).identity
    except (IpoError, OSError, UnicodeDecodeError):
        return None


# ---- cache keys: the model and its warm stand-in write and read the same ones ----------
def open_clip_version() -> str:
    """The installed open_clip's version, read without importing it (and torch)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def image_key(file_sha: str, identity: str, preprocess_id: str, version: str, precision: str,
              image_loading: str = "ipo") -> str:
    from ipo_cli.cache import key_of

    extra: tuple[str, ...] = () if precision == "fp32" else (precision,)  # fp32 keys predate the precision
    extra += () if image_loading == "ipo" else (image_loading,)  # ipo keys predate the choice
    return "img:" + key_of(file_sha, identity, preprocess_id, version, *extra)


@functools.lru_cache(maxsize=1)
def pillow_version() -> str:
    """The installed Pillow's version, read without importing it: what decodes an image."""
    import importlib.metadata

    try:
        return importlib.metadata.version("pillow")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def unreadable_key(file_sha: str, image_loading: str = "ipo") -> str:
    """Where the cache remembers that these bytes could not be read as an image: by their
    hash (changed bytes are checked again), the decoder's version and ipo's (its image
    gates), and the loading (EXIF rotation can fail where convert("RGB") does not). No
    model in it: an image unreadable for one CLIP is unreadable for all."""
    from ipo_cli import __version__
    from ipo_cli.cache import key_of

    return "unreadable:" + key_of(file_sha, image_loading, pillow_version(), __version__)


UNREADABLE_PATH = "<path>"  # a reason names its file by this, filled in when read back


def card_key(identity: str, version: str) -> str:
    from ipo_cli.cache import key_of

    return "card:" + key_of(identity, version)


def text_key(identity: str, version: str, text: str) -> str:
    from ipo_cli.cache import key_of

    return "txt:" + key_of(identity, version, text)
