"""A loaded open_clip model: image embedding (cached on disk), fast text encoding, and
where it runs (`resolve_device`).

What to load comes from clip/spec.py (`parse_clip`); when the cache already holds every
embedding a command needs, clip/warm.py stands in for this model without torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ipo_cli.cache import Store, sha256_file
from ipo_cli.clip.spec import ClipSpec, card_key, image_key, text_key
from ipo_cli.clip.warm import remember_unreadable
from ipo_cli.data.folders import UnreadableImage, load_image
from ipo_cli.errors import IpoError
from ipo_cli.gates import cached as checked

AUTOCAST_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class ClipModel:
    """A loaded open_clip model with cached image embedding and fast text encoding."""

    def __init__(self, spec: ClipSpec, model, preprocess, tokenizer, device: str = "cpu", precision: str = "auto"):
        import open_clip
        import torch

        self.spec = spec
        self.device = device
        # Image forward passes run under autocast: fp16 on CUDA by default (tensor cores,
        # half the memory traffic), fp32 elsewhere; bf16 can be asked for on any device.
        if precision == "auto":
            precision = "fp16" if device.startswith("cuda") else "fp32"
        if precision not in AUTOCAST_DTYPES:
            raise IpoError(f"CLIP precision must be auto, {', '.join(AUTOCAST_DTYPES)}, not {precision!r}")
        self.precision = precision
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.logit_scale = float(model.logit_scale.exp().item())
        self.preprocess_id = str(preprocess)
        self.identity = spec.identity
        self.open_clip_version = open_clip.__version__
        self._text_memo: dict[str, "torch.Tensor"] = {}
        self.can_trim = (
            type(model).__name__ == "CLIP"
            and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")
        )
        self.stats = {"images_computed": 0, "images_cached": 0, "texts_encoded": 0}
        self.warm = False
        self.text_store: Store | None = None
        self.image_loading = "ipo"  # or "reference" (data/folders.load_image); part of the image key

    def remember(self, store: Store) -> None:
        """Keep text embeddings on disk too, and record what a warm command needs to use the
        cache without loading this model (see CachedClip)."""
        store.set_json(card_key(self.identity, self.open_clip_version), {
            "preprocess_id": self.preprocess_id, "open_clip_version": self.open_clip_version,
            "precision": self.precision, "logit_scale": self.logit_scale, "embed_dim": self.embed_dim,
            "context_length": int(getattr(self.model, "context_length", 77) or 77)})
        self.text_store = store

    # ---- images -------------------------------------------------------------------
    def image_key(self, file_sha: str) -> str:
        return image_key(file_sha, self.identity, self.preprocess_id, self.open_clip_version, self.precision,
                         self.image_loading)

    def _autocast(self):
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type=device_type, dtype=getattr(torch, AUTOCAST_DTYPES[self.precision]))

    def _decode(self, path: Path):
        """One image ready for the model, or the reason it is unreadable (runs in a thread)."""
        try:
            return self.preprocess(load_image(path, self.image_loading)), None
        except UnreadableImage as exc:
            return None, exc

    def embed_images(
        self,
        paths: Sequence[Path],
        store: Store | None = None,
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
    ):
        """Normalised float32 embeddings (N, D) of the readable images, and the failures.

        Returns (embeddings, kept, failures): `kept` indexes `paths`, `failures` is a list
        of UnreadableImage. Embeddings are stored as float16, and fresh ones are rounded
        the same way, so a warm run gives exactly the numbers of a cold one.
        """
        import numpy as np
        import torch

        results: dict[int, np.ndarray] = {}
        keys: dict[int, str] = {}
        shas: dict[int, str] = {}
        todo: list[int] = []
        for i, path in enumerate(paths):
            try:
                shas[i] = sha256_file(path)
                keys[i] = self.image_key(shas[i])
            except OSError:  # unreadable: load_image below reports why
                keys[i] = ""
                todo.append(i)
                continue
            cached = checked.vector(store.get_array(keys[i]), self.embed_dim) if store is not None else None
            if cached is not None:  # finite, float, the model's width (gates/cached.py); else recomputed
                results[i] = cached
                self.stats["images_cached"] += 1
                if progress:
                    progress(1)
            else:
                todo.append(i)
        failures: list[UnreadableImage] = []
        batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
        # Decoding (Pillow, the resize) runs in threads one batch ahead of the forward pass,
        # so the accelerator is not left waiting on image files.
        workers = max(1, min(8, (os.cpu_count() or 2)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            ahead = [pool.submit(self._decode, paths[i]) for i in batches[0]] if batches else []
            for b, batch in enumerate(batches):
                current, ahead = ahead, ([pool.submit(self._decode, paths[i]) for i in batches[b + 1]]
                                         if b + 1 < len(batches) else [])
                batch_idx, tensors = [], []
                for i, future in zip(batch, current):
                    tensor, error = future.result()
                    if error is not None:
                        failures.append(error)
                        if store is not None and i in shas:  # the warm path skips it too (clip/warm.py)
                            remember_unreadable(store, shas[i], self.image_loading, error)
                    else:
                        tensors.append(tensor)
                        batch_idx.append(i)
                if tensors:
                    with torch.inference_mode(), self._autocast():
                        feats = self.model.encode_image(torch.stack(tensors).to(self.device, non_blocking=True))
                    feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu()
                    half = feats.numpy().astype(np.float16)
                    for row, i in enumerate(batch_idx):
                        results[i] = half[row].astype(np.float32)
                        if store is not None and keys[i]:
                            store.set_array(keys[i], half[row])
                    self.stats["images_computed"] += len(batch_idx)
                if progress:
                    progress(len(batch))
        kept = sorted(results)
        dim = self.embed_dim
        emb = np.stack([results[i] for i in kept]) if kept else np.zeros((0, dim), np.float32)
        return emb, kept, failures

    def embed_pil_images(self, images: list):
        """Embeddings of in-memory PIL images (not cached: they have no file to key them
        by), rounded to float16 like cached ones so that both give the same numbers."""
        import numpy as np
        import torch

        tensors = torch.stack([self.preprocess(img.convert("RGB")) for img in images]).to(self.device)
        with torch.inference_mode(), self._autocast():
            feats = self.model.encode_image(tensors)
        feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
        return feats.astype(np.float16).astype(np.float32)

    @functools.cached_property
    def embed_dim(self) -> int:
        return int(self.encode_texts(["a"]).shape[1])

    # ---- texts --------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]):
        return self.tokenizer(list(texts))

    def token_count(self, text: str) -> int:
        """Tokens including start and end markers, without truncation (CLIP allows 77)."""
        encode = getattr(self.tokenizer, "encode", None)
        if callable(encode):
            try:
                return len(encode(text)) + 2
            except Exception:  # noqa: BLE001 - HF tokenizers differ; fall through
                pass
        return int((self.tokenize([text])[0] != 0).sum())

    def encode_texts(self, texts: Sequence[str], trim: bool = True):
        """Normalised float32 text embeddings (n, D), memoised per text."""
        import torch

        todo = list(dict.fromkeys(t for t in texts if t not in self._text_memo))
        for start in range(0, len(todo), 256):
            chunk = todo[start:start + 256]
            tokens = self.tokenize(chunk).to(self.device)
            with torch.inference_mode():
                if trim and self.can_trim:
                    feats = encode_text_trimmed(self.model, tokens)
                else:
                    feats = self.model.encode_text(tokens)
                feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu()
            for text, row in zip(chunk, feats):
                self._text_memo[text] = row
                if self.text_store is not None:
                    self.text_store.set_json(text_key(self.identity, self.open_clip_version, text), {
                        "embedding": row.tolist(), "tokens": self.token_count(text)})
            self.stats["texts_encoded"] += len(chunk)
        if not texts:
            return torch.zeros((0, 0)).numpy()
        return torch.stack([self._text_memo[t] for t in texts]).numpy()

    def encode_texts_padded(self, texts: Sequence[str]):
        """The reference path: open_clip's own encode_text over all 77 positions, no memo."""
        import torch

        with torch.inference_mode():
            feats = self.model.encode_text(self.tokenize(texts).to(self.device))
            return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


def encode_text_trimmed(model, tokens):
    """open_clip's CLIP.encode_text over only the positions up to the longest prompt.

    The text transformer is causal, so the output at the end-of-text token never sees
    the padding after it: cutting the padding changes nothing but the cost.
    """
    from open_clip.transformer import text_global_pool

    if model.text_pool_type == "eos":
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    else:
        ends = tokens.argmax(dim=-1)
    length = int(ends.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        import torch.nn as nn

        x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
    return x


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
    "xavier_uniform_", "xavier_normal_", "orthogonal_", "constant_", "zeros_", "ones_",
)


@contextlib.contextmanager
def _skip_weight_init():
    import torch

    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def resolve_device(device: str = "auto") -> str:
    """`auto` is CUDA when torch sees a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise IpoError(f"--device {device}: torch sees no CUDA GPU here", "use --device cpu (or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise IpoError(f"--device must be auto, cpu or cuda[:N], not {device!r}")
    return device


def set_cpu_threads(threads: int) -> None:
    """torch's intra-op threads on the CPU. torch counts the machine's cores, not a container's
    quota; ipo runs CLIP and llama.cpp in turn, so each gets the same usable cores (the job
    decides how many, llm/threads.py) and the two never ask for more between them."""
    import torch

    if threads >= 1 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def load_clip(spec: ClipSpec, device: str = "auto", precision: str = "auto") -> ClipModel:
    """Load the model once; errors about missing or broken weights are one line."""
    import open_clip
    import torch

    device = resolve_device(device)
    if spec.config is not None:
        open_clip.add_model_config(spec.config)  # a custom architecture: open_clip learns its name

    if spec.hf_hub:
        pretrained_arg, name = None, f"hf-hub:{spec.hf_hub}"
    else:
        name = spec.arch
        pretrained_arg = str(spec.weights) if spec.weights else spec.pretrained
    random_weights = spec.weights is None and spec.pretrained is None and spec.hf_hub is None
    if random_weights:
        torch.manual_seed(0)
    try:
        # Random initialisation is wasted work when a checkpoint overwrites every
        # parameter (open_clip loads strictly): it is most of the load time.
        with contextlib.nullcontext() if random_weights else _skip_weight_init():
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained_arg, device=device
            )
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # noqa: BLE001 - open_clip raises many kinds; we reword them
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if spec.weights is not None:
            raise IpoError(
                f"checkpoint {spec.weights} could not be loaded as {spec.arch}: {first}",
                "pass an open_clip state dict saved for that architecture",
            ) from None
        offline = any(w in first.lower() for w in ("connection", "offline", "local cache", "resolve", "urlopen"))
        raise IpoError(
            f"CLIP weights {spec.identity} are not on disk and could not be downloaded"
            + (" (no connection to the model hub)" if offline else f": {first[:160]}"),
            "connect to the internet once to download them, or pass --clip ARCH --clip-weights FILE",
        ) from None
    return ClipModel(spec, model, preprocess, tokenizer, device, precision)
