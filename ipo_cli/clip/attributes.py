"""The CLIP-only describer (`--lmm clip`): what the CLIP model itself sees in an image.

No multimodal model at all: the image's embedding (the cached one every `ipo eval` and
`ipo optimize` already computes) is scored against a vocabulary of visual attributes
(visual_attributes.json: viewpoints, counts, shapes, MINC's materials, the basic colour
terms, DTD's 47 textures, backgrounds, lighting; each family's source is cited there),
each term read through its family's prompt ("a photo of a {} texture."). The best terms of
each family fill a short sentence: "a close-up photo of a single object; round in shape;
made of metal; mostly white and grey; striped and lined texture; on a plain white
background; in soft light."

The vocabulary never holds a class name (terms that match a class of the run, as DTD's
textures do for DTD, are dropped), is encoded once per CLIP model, and its hash is part
of the describer's identity, which captions are cached under. Descriptions are only as
good as the CLIP model's zero-shot reading of these words: a random-weight model describes
noise, and CLIP's text priors favour some terms whatever the image.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ipo_cli.errors import IpoError
from ipo_cli.gates import json_in

VOCABULARY_FILE = Path(__file__).with_name("visual_attributes.json")


@dataclass(frozen=True)
class Family:
    name: str
    prompt: str  # the text CLIP reads, "{}" replaced by the term
    say: str  # how the chosen terms read in the sentence
    top: int
    terms: tuple[str, ...]
    join: str = " and "

    def texts(self) -> list[str]:
        return [self.prompt.format(t) for t in self.terms]


@dataclass(frozen=True)
class Vocabulary:
    sentence: str
    families: tuple[Family, ...]
    sha256: str

    def without(self, classnames: Sequence[str]) -> Vocabulary:
        """The vocabulary less every term in which a class name appears as a whole phrase
        (the same rule as caption redaction); a family left empty is dropped."""
        from ipo_cli.llm.captions import redaction_patterns

        pattern = redaction_patterns(classnames)
        if pattern is None:
            return self
        families = []
        for f in self.families:
            kept = tuple(t for t in f.terms if not pattern.search(t))
            if kept:
                families.append(Family(f.name, f.prompt, f.say, min(f.top, len(kept)), kept, f.join))
        if families == list(self.families):
            return self
        digest = hashlib.sha256(json.dumps([[f.name, f.terms] for f in families]).encode()).hexdigest()
        return Vocabulary(self.sentence, tuple(families), digest)


def load_vocabulary(path: Path = VOCABULARY_FILE) -> Vocabulary:
    """The attribute vocabulary, checked: a malformed file is a one-line error."""
    try:
        raw = json_in.read_bytes(path, "attribute vocabulary")
        data = json_in.loads(raw, f"attribute vocabulary {path}")
        families = []
        for f in data["families"]:
            terms = tuple(f["terms"])
            if not terms or not all(isinstance(t, str) and t.strip() for t in terms):
                raise ValueError(f"family {f.get('name')!r} has an empty or non-text term")
            if f["prompt"].count("{}") != 1 or f["say"].count("{}") != 1:
                raise ValueError(f"family {f['name']!r}: prompt and say need one {{}} each")
            families.append(Family(str(f["name"]), f["prompt"], f["say"], max(1, int(f["top"])), terms,
                                   str(f.get("join", " and "))))
        sentence = str(data["sentence"])
        sentence.format(**{f.name: "" for f in families})  # every placeholder names a family
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise IpoError(f"attribute vocabulary {path} is malformed: {exc}") from None
    return Vocabulary(sentence, tuple(families), hashlib.sha256(raw).hexdigest())


# One encoding of the vocabulary per loaded CLIP model (and vocabulary). Keyed by the model
# object, not its identity: each loaded model encodes (and so caches on disk) once.
_TEXT_MATRICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ClipAttributes:
    """A describer backend (see llm/captions.py: Captioner) that needs only CLIP.

    `clip` is a loaded ClipModel (or a CachedClip whose cache holds the vocabulary);
    `store` the embeddings store, so images embedded by eval or optimize are not embedded
    again; `exclude` the class names no term may contain."""

    def __init__(self, clip, store=None, exclude: Sequence[str] = (), vocabulary: Vocabulary | None = None):
        self.clip = clip
        self.store = store
        self.vocabulary = (vocabulary or load_vocabulary()).without(exclude)
        self.identity = f"clip-attributes@{clip.identity}#{self.vocabulary.sha256[:16]}"
        if getattr(clip, "image_loading", "ipo") != "ipo":  # the captions' cache key names the decoding
            self.identity += f"#{clip.image_loading}"
        self._images: dict[str, object] = {}
        self._failed: dict[str, Exception] = {}

    def text_matrices(self) -> list:
        """Each family's normalised text embeddings (terms x D), encoded once per model."""
        per_model = _TEXT_MATRICES.setdefault(self.clip, {})
        key = self.vocabulary.sha256
        if key not in per_model:
            texts = [t for f in self.vocabulary.families for t in f.texts()]
            encoded = self.clip.encode_texts(texts)
            matrices, start = [], 0
            for f in self.vocabulary.families:
                matrices.append(encoded[start:start + len(f.terms)])
                start += len(f.terms)
            per_model[key] = matrices
        return per_model[key]

    def prepare(self, paths: Sequence[Path]) -> None:
        """Embed the images in batches (from the cache where they are)."""
        paths = [Path(p) for p in paths if str(p) not in self._images]
        if not paths:
            return
        emb, kept, failures = self.clip.embed_images(paths, self.store)
        for row, i in enumerate(kept):
            self._images[str(paths[i])] = emb[row]
        from ipo_cli.data.folders import UnreadableImage

        failed = {str(f.path): f for f in failures}
        done = set(kept)
        for i, path in enumerate(paths):
            if i not in done:
                self._failed[str(path)] = failed.get(str(path)) or UnreadableImage(path, "CLIP could not embed it")

    def describe_file(self, path: Path, settings=None) -> str:
        key = str(path)
        if key not in self._images and key not in self._failed:
            self.prepare([path])
        if key in self._failed:
            raise self._failed.pop(key)
        return self.describe_embedding(self._images.pop(key))

    def describe_embedding(self, embedding) -> str:
        import numpy as np

        vector = np.asarray(embedding, dtype=np.float32)
        parts: dict[str, str] = {}
        for family, matrix in zip(self.vocabulary.families, self.text_matrices()):
            scores = np.asarray(matrix, dtype=np.float32) @ vector
            order = np.argsort(-scores, kind="stable")[:family.top]
            parts[family.name] = family.say.format(family.join.join(family.terms[i] for i in order))
        names = {f.name for f in self.vocabulary.families}
        missing = {name: "" for name in _placeholders(self.vocabulary.sentence) if name not in names}
        text = self.vocabulary.sentence.format(**parts, **missing)
        return _tidy(text)

    def describe(self, data_uri: str, settings=None) -> str:  # the Captioner uses describe_file
        raise IpoError("the CLIP-only describer reads image files, not data URIs")


def clip_describer(clip: str, clip_weights: Path | str | None = None, cache_dir: Path | None = None,
                   exclude: Sequence[str] = (), paths: Sequence[Path] = (), device: str = "auto",
                   loading=None, image_loading: str = "ipo") -> ClipAttributes:
    """`ipo describe --lmm clip --clip SPEC [--clip-weights FILE]`: CLIP as `ipo eval` gets
    it (clip/loading.py): from the embeddings cache alone when it holds these images and
    the vocabulary's texts (no torch), else loaded, its embeddings kept for next time."""
    from ipo_cli import cache
    from ipo_cli.clip.loading import open_clip_model

    store = cache.Store(cache.cache_root(cache_dir), "embeddings")
    vocabulary = load_vocabulary().without(exclude)
    texts = [t for f in vocabulary.families for t in f.texts()]
    model = open_clip_model(clip, clip_weights, store, paths, texts, device, loading=loading,
                            image_loading=image_loading)
    model.image_loading = image_loading  # how image files are decoded: part of their cache key
    return ClipAttributes(model, store, vocabulary=vocabulary)


def _placeholders(sentence: str) -> list[str]:
    import string

    return [name for _, name, _, _ in string.Formatter().parse(sentence) if name]


def _tidy(text: str) -> str:
    """A sentence with families dropped (their placeholders empty) reads cleanly."""
    import re

    text = re.sub(r"\s*;\s*(?=;|\.$)", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.lstrip("; ").replace(" ;", ";")
