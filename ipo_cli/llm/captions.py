"""Image descriptions from a multimodal model (LMM): the second input of IPO's meta-prompt.

Images reach the model as data URIs of a Pillow re-encoding (never a path or URL for
llama.cpp to fetch): in process through a llama-cpp-python chat handler, or as
`image_url` parts to an OpenAI-compatible server. Captions are cached on disk by image
content, model identity, instruction and generation settings. Class names that slip into
a caption are redacted afterwards, so the cache holds what the model said.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from ipo_cli.cache import Store, key_of, sha256_file
from ipo_cli.data.folders import UnreadableImage, load_image
from ipo_cli.errors import IpoError

DEFAULT_INSTRUCTION = (
    "Describe this image in detail: the main object's shape, colours, materials, parts and "
    "the background. Do not say what kind of object it is or name its category."
)
REDACTION = "[...]"
HANDLER_CLASSES = {
    "llava-1-5": "Llava15ChatHandler",
    "llava-1-6": "Llava16ChatHandler",
    "moondream": "MoondreamChatHandler",
    "nanollava": "NanoLlavaChatHandler",
    "minicpm-v-2.6": "MiniCPMv26ChatHandler",
    "qwen2.5-vl": "Qwen25VLChatHandler",
    "mtmd": "MTMDChatHandler",
}


@dataclass(frozen=True)
class CaptionSettings:
    instruction: str = DEFAULT_INSTRUCTION
    max_tokens: int = 160
    temperature: float = 0.0
    seed: int = 0
    image_size: int = 448  # longest side of the re-encoded image


def image_data_uri(path: Path, max_side: int = 448) -> str:
    """The image as a JPEG data URI, at most max_side pixels on its longest side."""
    img = load_image(path)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def caption_messages(data_uri: str, instruction: str) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri}},
        {"type": "text", "text": instruction},
    ]}]


class VisionBackend(Protocol):
    identity: str

    def describe(self, data_uri: str, settings: CaptionSettings) -> str: ...


class LlamaCppVision:
    """A GGUF multimodal model with its projector, through a llama-cpp-python chat handler."""

    def __init__(self, model_path: Path, mmproj: Path, handler: str, n_ctx: int = 4096, identity: str | None = None,
                 gpu_layers: int | None = None):
        from ipo_cli.store.local import check_gguf

        check_gguf(model_path)
        check_gguf(mmproj, "mmproj file")
        if handler not in HANDLER_CLASSES:
            raise IpoError(f"unknown chat handler {handler!r}", f"choose one of {', '.join(HANDLER_CLASSES)}")
        import llama_cpp.llama_chat_format as chat_format
        from llama_cpp import Llama

        from ipo_cli.llm.placement import resolve_gpu_layers

        cls = getattr(chat_format, HANDLER_CLASSES[handler], None)
        if cls is None:
            raise IpoError(f"this llama-cpp-python has no {HANDLER_CLASSES[handler]}", "upgrade llama-cpp-python")
        try:
            chat_handler = cls(clip_model_path=str(mmproj), verbose=False)
            self.llama = Llama(str(model_path), chat_handler=chat_handler, n_ctx=n_ctx, verbose=False,
                               n_gpu_layers=resolve_gpu_layers(gpu_layers))
            # The handler loads the projector on first use; load it now so that a
            # projector that does not fit the model fails here, before any image.
            init = getattr(chat_handler, "_init_mtmd_context", None)
            if callable(init):
                init(self.llama)
        except (ValueError, RuntimeError, OSError) as exc:
            raise IpoError(
                f"llama.cpp could not load {model_path.name} with {mmproj.name} and the {handler} handler: {exc}",
                "check that the projector belongs to the model and the handler fits it (--handler)",
            ) from None
        self.identity = identity or f"{model_path.name}+{mmproj.name}:{handler}"

    def describe(self, data_uri: str, settings: CaptionSettings) -> str:
        out = self.llama.create_chat_completion(
            messages=caption_messages(data_uri, settings.instruction),
            max_tokens=settings.max_tokens, temperature=settings.temperature, seed=settings.seed,
        )
        return out["choices"][0]["message"]["content"] or ""


class ServerVision:
    """An OpenAI-compatible server with a multimodal model; images go as image_url parts."""

    def __init__(self, base_url: str, model: str | None = None, **kwargs):
        from ipo_cli.llm.openai_http import OpenAIServerLLM

        self.client = OpenAIServerLLM(base_url, model, **kwargs)
        self.client.detect()  # which server, which model: the identity captions are cached under
        self.identity = self.client.identity

    def describe(self, data_uri: str, settings: CaptionSettings) -> str:
        from ipo_cli.llm.base import SamplingSettings

        sampling = SamplingSettings(temperature=settings.temperature, max_tokens=settings.max_tokens)
        return self.client.generate(caption_messages(data_uri, settings.instruction), settings.seed, sampling).text


def redaction_patterns(classnames: Sequence[str]) -> re.Pattern | None:
    """Each class name as a whole phrase, and its plural: "pink primrose" and "pink
    primroses" are redacted, "pink" and "primrose" alone are not (a description that loses
    its colours and its generic nouns is of little use to the LLM). Pass the classes the
    loop trains on only: novel class names must not change what the LLM sees."""
    terms: set[str] = set()
    for name in classnames:
        words = re.findall(r"[a-z0-9]+", name.lower())
        if words:
            terms.add(r"[\s_\-]*".join(map(re.escape, words)))  # "t-shirt", "t shirt", "tshirt"
    if not terms:
        return None
    alternatives = "|".join(sorted(terms, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})(?:e?s)?\b", re.IGNORECASE)


def redact(text: str, pattern: re.Pattern | None) -> tuple[str, int]:
    if pattern is None:
        return text, 0
    return pattern.subn(REDACTION, text)


@dataclass
class Caption:
    path: str
    caption: str
    raw: str
    redactions: int = 0
    cached: bool = False
    label: str | None = None


@dataclass
class CaptionReport:
    captions: list[Caption] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    model: str = ""

    @property
    def from_cache(self) -> int:
        return sum(c.cached for c in self.captions)

    @property
    def redactions(self) -> int:
        return sum(c.redactions for c in self.captions)

    def summary(self) -> dict:
        return {"model": self.model, "captioned": len(self.captions), "from_cache": self.from_cache,
                "failed": len(self.failed), "redactions": self.redactions}

    def to_json_lines(self) -> list[dict]:
        return [asdict(c) for c in self.captions]


class Captioner:
    def __init__(self, backend: VisionBackend, store: Store | None = None, settings: CaptionSettings = CaptionSettings()):
        self.backend = backend
        self.store = store
        self.settings = settings
        self.calls = 0

    def key(self, image_sha: str) -> str:
        return "caption:" + key_of(image_sha, self.backend.identity, asdict(self.settings))

    def caption(self, paths: Sequence[Path], classnames: Sequence[str] = (), labels: Sequence[str | None] | None = None,
                progress: Callable[[int], None] | None = None) -> CaptionReport:
        pattern = redaction_patterns(classnames)
        report = CaptionReport(model=self.backend.identity)
        for i, path in enumerate(paths):
            label = labels[i] if labels else None
            try:
                key = self.key(sha256_file(path))
                cached = self.store.get_json(key) if self.store is not None else None
                if isinstance(cached, dict) and isinstance(cached.get("caption"), str):
                    raw, hit = cached["caption"], True
                else:
                    raw = self.backend.describe(image_data_uri(path, self.settings.image_size), self.settings).strip()
                    self.calls += 1
                    hit = False
                    if self.store is not None:
                        self.store.set_json(key, {"caption": raw})
            except UnreadableImage as exc:
                report.failed.append((str(path), exc.reason))
            except OSError as exc:
                report.failed.append((str(path), str(exc)))
            else:
                text, n = redact(raw, pattern)
                report.captions.append(Caption(str(path), text, raw, n, hit, label))
            if progress:
                progress(1)
        return report


def collect_images(images: Path, classes: Path | None = None):
    """What `ipo describe` captions: a flat folder of images, or a folder of class folders.

    Returns the paths, their class names (None in a flat folder) and the class names to
    redact (from --classes, or the class folders)."""
    from ipo_cli.data import folders as ds

    images = Path(images)
    if not images.is_dir():
        raise IpoError(f"images folder {images} does not exist")
    flat = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in ds.IMAGE_EXTENSIONS)
    if flat:
        classnames = ds.read_classes(classes) if classes else []
        return flat, [None] * len(flat), classnames
    data = ds.load_dataset(images, classes)
    return data.paths, [data.classnames[label] for label in data.labels], data.classnames


def load_vision(model: str | None = None, mmproj: Path | None = None, handler: str | None = None,
                url: str | None = None, url_model: str | None = None, n_ctx: int | None = None,
                gpu_layers: int | None = None, machine: str = "cpu") -> VisionBackend:
    """`--lmm NAME|FILE [--mmproj FILE] [--handler H]` or `--lmm-url URL [--lmm-model NAME]`."""
    if url:
        from ipo_cli.llm.openai_http import check_url

        check_url(url, "--lmm-url")
        return ServerVision(url, url_model)
    from ipo_cli.store.entries import default_model
    from ipo_cli.store.local import resolve

    local = resolve(model or default_model("lmm", machine).name, "lmm", mmproj)
    return LlamaCppVision(local.path, local.mmproj, handler or local.handler or "mtmd",
                          n_ctx=n_ctx or local.n_ctx, identity=local.identity, gpu_layers=gpu_layers)
