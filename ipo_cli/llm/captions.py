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
from typing import Any, Protocol

from ipo_cli.cache import Store, key_of, sha256_file
from ipo_cli.data.folders import UnreadableImage, load_image
from ipo_cli.errors import IpoError

DEFAULT_INSTRUCTION = (
    "Describe this image in detail: the main object's shape, colours, materials, parts and "
    "the background. Do not say what kind of object it is or name its category."
)
REDACTION = "[...]"
CLIP_DESCRIBER = "clip"  # --lmm clip: the CLIP-only describer (ipo_cli/clip/attributes.py)
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
                 gpu_layers: int | None = None, n_threads: int | None = None):
        from ipo_cli.store.local import check_gguf

        check_gguf(model_path)
        check_gguf(mmproj, "mmproj file")
        if handler not in HANDLER_CLASSES:
            raise IpoError(f"unknown chat handler {handler!r}", f"choose one of {', '.join(HANDLER_CLASSES)}")
        import llama_cpp.llama_chat_format as chat_format
        from llama_cpp import Llama

        from ipo_cli.llm.placement import resolve_gpu_layers
        from ipo_cli.llm.threads import llama_threads

        cls = getattr(chat_format, HANDLER_CLASSES[handler], None)
        if cls is None:
            raise IpoError(f"this llama-cpp-python has no {HANDLER_CLASSES[handler]}", "upgrade llama-cpp-python")
        try:
            chat_handler = cls(clip_model_path=str(mmproj), verbose=False)
            threads = llama_threads(n_threads)  # not llama-cpp-python's os.cpu_count() (llm/threads.py)
            self.llama = Llama(str(model_path), chat_handler=chat_handler, n_ctx=n_ctx, verbose=False,
                               n_gpu_layers=resolve_gpu_layers(gpu_layers), n_threads=threads,
                               n_threads_batch=threads)
            # The handler loads the projector on first use; load it now so that a
            # projector that does not fit the model fails here, before any image.
            init = getattr(chat_handler, "_init_mtmd_context", None)
            if callable(init):
                init(self.llama)
        except (ValueError, RuntimeError, OSError) as exc:
            width = getattr(getattr(self, "llama", None), "n_embd", lambda: None)()
            raise IpoError(
                f"llama.cpp could not load {model_path.name} with {mmproj.name} and the {handler} handler: {exc}",
                "check that the projector belongs to the model (its output width must be the model's "
                + (f"n_embd, {width}" if width else "n_embd") + ") and the handler fits it (--handler)",
            ) from None
        if handler == "mtmd":
            check_template_takes_images(self.llama, chat_handler, model_path.name)
        _route_mtmd_logs()
        self.identity = f"{identity or model_path.name + '+' + mmproj.name}:{handler}"

    def describe(self, data_uri: str, settings: CaptionSettings) -> str:
        MTMD_ERRORS.clear()
        try:
            messages: Any = caption_messages(data_uri, settings.instruction)  # OpenAI-style parts
            out: Any = self.llama.create_chat_completion(
                messages=messages,
                max_tokens=settings.max_tokens, temperature=settings.temperature, seed=settings.seed,
            )
        except Exception as exc:  # the handler, its template or llama.cpp: a reason for this image
            said = " ".join(" ".join(MTMD_ERRORS).split())[:160]
            raise DescribeFailed(one_line(exc) + (f" (llama.cpp: {said})" if said else "")) from None
        text = out["choices"][0]["message"]["content"]
        if not isinstance(text, str):
            raise DescribeFailed(f"the handler answered {type(text).__name__}, not text")
        return text


# llama.cpp's mtmd code logs through its own callback (mtmd_log_set, mtmd_helper_log_set in
# tools/mtmd/mtmd.h and mtmd-helper.h; bound in llama_cpp/mtmd_cpp.py); by default every
# image prints "encoding image slice..." on stderr. ipo keeps the errors, to name them in
# the warning for the image, and drops the rest.
MTMD_ERRORS: list[str] = []
_MTMD_LOG_CALLBACK: list = []  # the ctypes callback must outlive the library's use of it


def _route_mtmd_logs() -> None:
    if _MTMD_LOG_CALLBACK:
        return
    import ctypes

    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd_cpp

    @llama_cpp.llama_log_callback
    def keep_errors(level: int, text: bytes, user_data) -> None:  # GGML_LOG_LEVEL_ERROR is 3
        if level == 3 and len(MTMD_ERRORS) < 20:
            MTMD_ERRORS.append(text.decode("utf-8", "replace"))

    _MTMD_LOG_CALLBACK.append(keep_errors)
    for setter in ("mtmd_log_set", "mtmd_helper_log_set"):
        if hasattr(mtmd_cpp, setter):
            getattr(mtmd_cpp, setter)(keep_errors, ctypes.c_void_p(0))


class DescribeFailed(Exception):
    """The describer could not describe one image (the reason is one line)."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:200]}"


def check_template_takes_images(llama, chat_handler, model_name: str) -> None:
    """MTMDChatHandler renders the model's own chat template with each message's content as
    a list of parts, an image part turned into a text part holding llama.cpp's media marker
    (llama_chat_format.py, MTMDChatHandler._get_template_messages). A template that
    concatenates `content` as a string (SmolLM2's, most text-only models') fails on every
    image; one that skips the parts drops the image. Either is refused here, before any
    image is sent, by rendering a probe message the same way."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    hint = ("--handler mtmd renders the model's chat template with images as content parts: use a multimodal "
            "model whose template takes them, or the handler made for the model (--handler)")
    if not isinstance(template, str) or not template:
        raise IpoError(f"{model_name} has no chat template, which --handler mtmd needs", hint)
    marker = chat_handler._mtmd_cpp.mtmd_default_marker().decode("utf-8")
    probe = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}},
                                          {"type": "text", "text": "probe"}]}]
    extensions: list[Any] = [jinja2.ext.loopcontrols]
    if hasattr(Jinja2ChatFormatter, "IgnoreGenerationTags"):
        extensions.append(Jinja2ChatFormatter.IgnoreGenerationTags)
    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=extensions)
        env.filters["tojson"] = getattr(Jinja2ChatFormatter, "tojson", env.filters.get("tojson"))
        messages = chat_handler._get_template_messages(probe, marker)

        def raise_exception(message: str):
            raise ValueError(message)

        text = env.from_string(template).render(messages=messages, add_generation_prompt=True, eos_token="",
                                                bos_token="", raise_exception=raise_exception)
    except Exception as exc:  # a template is code from the file: any failure is a refusal
        raise IpoError(f"the chat template of {model_name} cannot take image parts ({one_line(exc)})", hint) from None
    if marker not in text:
        raise IpoError(f"the chat template of {model_name} drops image parts (no image marker in its output)", hint)


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
        """Each image's caption, from the cache or the describer. An image the describer
        fails on (its chat handler, template or llama.cpp) is listed in `failed` with a
        one-line reason and skipped; when it fails on every image it tried, that is an
        IpoError. Errors that are already ours (IpoError: a server that cannot be reached)
        stop at once."""
        pattern = redaction_patterns(classnames)
        report = CaptionReport(model=self.backend.identity)
        keys: list[str] = []  # "" for a file that cannot be read
        cached: dict[int, str] = {}
        for i, path in enumerate(paths):
            try:
                keys.append(self.key(sha256_file(path)))
            except OSError as exc:
                keys.append("")
                report.failed.append((str(path), str(exc)))
                continue
            hit = self.store.get_json(keys[i]) if self.store is not None else None
            if isinstance(hit, dict) and isinstance(hit.get("caption"), str):
                cached[i] = hit["caption"]
        todo = [p for i, p in enumerate(paths) if keys[i] and i not in cached]
        prepare = getattr(self.backend, "prepare", None)  # e.g. the CLIP describer embeds them in batches
        if todo and callable(prepare):
            prepare(todo)
        describe_file = getattr(self.backend, "describe_file", None)
        tried = failures = 0
        first_failure = ""
        for i, path in enumerate(paths):
            if not keys[i]:
                if progress:
                    progress(1)
                continue
            label = labels[i] if labels else None
            hit = i in cached
            try:
                if hit:
                    raw = cached[i]
                else:
                    tried += 1
                    if callable(describe_file):
                        raw = describe_file(Path(path), self.settings).strip()
                    else:
                        raw = self.backend.describe(image_data_uri(path, self.settings.image_size), self.settings).strip()
                    self.calls += 1
                    if self.store is not None:
                        self.store.set_json(keys[i], {"caption": raw})
            except UnreadableImage as exc:
                tried -= 1  # the file's fault, not the describer's
                report.failed.append((str(path), exc.reason))
            except OSError as exc:
                tried -= 1
                report.failed.append((str(path), str(exc)))
            except DescribeFailed as exc:
                failures += 1
                first_failure = first_failure or str(exc)
                report.failed.append((str(path), f"the describer failed: {exc}"))
            else:
                text, n = redact(raw, pattern)
                report.captions.append(Caption(str(path), text, raw, n, hit, label))
            if progress:
                progress(1)
        if tried and failures == tried and not report.captions:
            raise IpoError(f"{self.backend.identity} could not describe any of the {tried} image(s): {first_failure}",
                           "check that the projector belongs to the model and the handler fits it (--handler)")
        return report


def collect_images(images: Path, classes: Path | None = None, split_part: str | None = None):
    """What `ipo describe` captions: a flat folder of images, a folder of class folders, or
    a CLIP_benchmark webdataset folder (`split_part`: its train split, else the first it has).

    Returns the paths, their class names (None in a flat folder) and the class names to
    redact (from --classes, or the class folders)."""
    from ipo_cli.data import folders as ds
    from ipo_cli.gates.paths import check_path

    images = check_path(images, "images folder", must_exist=True, kind="dir")  # a file or a FIFO: said as such
    flat = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in ds.IMAGE_EXTENSIONS)
    from ipo_cli.data import shards

    is_shards = shards.is_shard_folder(images)
    if split_part is not None and not is_shards:
        raise IpoError(f"--split-part is for a webdataset folder (with SPLIT/nshards.txt); {images} is not one")
    if flat and not is_shards:
        classnames = ds.read_classes(classes) if classes else []
        return flat, [None] * len(flat), classnames
    # a CLIP_benchmark webdataset folder: its train split, else the first it has (data/shards.py)
    part = split_part or next((s for s in ("train", "val", "test") if (images / s / "nshards.txt").is_file()), "train")
    if split_part is not None and split_part not in ("train", "val", "test"):
        raise IpoError(f"--split-part must be train, val or test, not {split_part!r}")
    data = ds.load_dataset(images, classes, split_part=part) if is_shards \
        else ds.load_dataset(images, classes)
    return data.paths, [data.classnames[label] for label in data.labels], data.classnames


def load_vision(model: str | None = None, mmproj: Path | None = None, handler: str | None = None,
                url: str | None = None, url_model: str | None = None, n_ctx: int | None = None,
                gpu_layers: int | None = None, machine: str = "cpu", n_threads: int | None = None) -> VisionBackend:
    """`--lmm NAME|FILE [--mmproj FILE] [--handler H]` or `--lmm-url URL [--lmm-model NAME]`.
    (`--lmm clip` needs a CLIP model: ipo_cli.clip.attributes.clip_describer.)"""
    from ipo_cli.llm import registry

    registered = None if url else registry.create(model, "lmm", n_ctx=n_ctx)
    if registered is not None:  # a describer a program registered (llm/registry.py)
        return registered
    if (model or "").lower() == CLIP_DESCRIBER and not url:
        raise IpoError("--lmm clip describes with a CLIP model, not a multimodal one",
                       "use ipo_cli.clip.attributes.clip_describer (ipo describe --lmm clip --clip SPEC)")
    if url:
        from ipo_cli.llm.openai_http import check_url

        check_url(url, "--lmm-url")
        return ServerVision(url, url_model)
    from ipo_cli.store.entries import default_model
    from ipo_cli.store.local import resolve

    local = resolve(model or default_model("lmm", machine).name, "lmm", mmproj)
    if local.mmproj is None:
        raise IpoError(f"the multimodal model {local.name} has no projector", "pass --mmproj FILE.gguf")
    return LlamaCppVision(local.path, local.mmproj, handler or local.handler or "mtmd",
                          n_ctx=n_ctx or local.n_ctx, identity=local.identity, gpu_layers=gpu_layers,
                          n_threads=n_threads)
