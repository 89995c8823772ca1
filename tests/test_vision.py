import contextlib

import numpy as np
import pytest

from ipo_cli import cache
from ipo_cli.clip import model as vision
from ipo_cli.clip.spec import parse_clip
from ipo_cli.errors import IpoError

PET_PROMPTS = [f"a photo of a {c}, a type of pet." for c in (
    "abyssinian", "american bulldog", "basset hound", "beagle", "bengal", "birman", "bombay",
    "british shorthair", "egyptian mau", "english cocker spaniel", "great pyrenees", "keeshond",
    "staffordshire bull terrier", "wheaten terrier", "yorkshire terrier", "pug")]


def test_trimmed_text_encoding_matches_open_clip_padded(vitb32):
    texts = PET_PROMPTS + ["a", "Identify the unique visual features of the sunflower flower accurately."]
    assert vitb32.can_trim
    padded = vitb32.encode_texts_padded(texts)
    trimmed = vitb32.encode_texts(texts)
    assert trimmed.shape == padded.shape == (len(texts), 512)
    assert np.abs(trimmed - padded).max() < 1e-4


def test_text_embeddings_are_memoised(tiny_clip):
    before = tiny_clip.stats["texts_encoded"]
    tiny_clip.encode_texts(["memo one", "memo two", "memo one"])
    tiny_clip.encode_texts(["memo two"])
    assert tiny_clip.stats["texts_encoded"] - before == 2


def test_token_count_includes_start_and_end(vitb32):
    assert vitb32.token_count("a photo") == 4
    assert vitb32.token_count("word " * 100) == 102


def test_second_embedding_run_computes_nothing(tiny_config, tiny_checkpoint, fashion_train, tmp_path):
    paths = sorted(fashion_train.rglob("*.png"))[:12]
    store = cache.Store(tmp_path, "embeddings")
    first = vision.load_clip(parse_clip(str(tiny_config), tiny_checkpoint))
    emb1, kept, failures = first.embed_images(paths, store)
    assert first.stats["images_computed"] == 12 and not failures
    second = vision.load_clip(parse_clip(str(tiny_config), tiny_checkpoint))
    emb2, _, _ = second.embed_images(paths, store)
    assert second.stats == {"images_computed": 0, "images_cached": 12, "texts_encoded": second.stats["texts_encoded"]}
    assert np.array_equal(emb1, emb2)
    assert np.allclose(np.linalg.norm(emb1, axis=1), 1, atol=1e-2)


def test_other_weights_do_not_share_cache_entries(tiny_config, tiny_checkpoint, fashion_train, tmp_path):
    import torch

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    other = tmp_path / "other.pt"
    torch.save(state, other)
    a = vision.load_clip(parse_clip(str(tiny_config), tiny_checkpoint))
    b = vision.load_clip(parse_clip(str(tiny_config), other))
    assert a.identity != b.identity
    sha = cache.sha256_file(next(fashion_train.rglob("*.png")))
    assert a.image_key(sha) != b.image_key(sha)


def test_unreadable_images_are_skipped_and_named(tiny_clip, fashion_train, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    good = sorted(fashion_train.rglob("*.png"))[:2]
    emb, kept, failures = tiny_clip.embed_images([good[0], bad, good[1]])
    assert kept == [0, 2] and emb.shape[0] == 2
    assert [f.path for f in failures] == [bad]


def test_unknown_model_suggests_close_names():
    with pytest.raises(IpoError, match="unknown CLIP model 'ViT-B-61' \\(did you mean ViT-B-16"):
        parse_clip("ViT-B-61:openai")
    with pytest.raises(IpoError, match="no pretrained weights 'opanai'.*openai"):
        parse_clip("ViT-B-16:opanai")
    with pytest.raises(IpoError, match="no weights"):
        parse_clip("ViT-B-16")
    with pytest.raises(IpoError, match="does not exist"):
        parse_clip("ViT-B-16", "/no/such/file.pt")


def test_corrupt_checkpoint_is_one_line_error(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(IpoError, match="could not be loaded as ViT-B-32") as info:
        vision.load_clip(parse_clip("ViT-B-32", bad))
    assert "\n" not in str(info.value)


def test_weights_not_on_disk_say_how_to_get_them():
    # HF_HUB_OFFLINE=1 (set for every test) makes the hub fail at once, as it does offline
    with pytest.raises(IpoError, match="not on disk.*--clip-weights"):
        vision.load_clip(parse_clip("ViT-B-32:openai"))


def test_device_choice():
    import torch

    assert vision.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(IpoError, match="must be auto, cpu or cuda"):
        vision.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(IpoError, match="sees no CUDA GPU"):
            vision.resolve_device("cuda:0")


def test_batch_size_does_not_change_embeddings(tiny_clip, fashion_train):
    paths = sorted(fashion_train.rglob("*.png"))[:7]
    one, _, _ = tiny_clip.embed_images(paths, batch_size=1)
    many, _, _ = tiny_clip.embed_images(paths, batch_size=32)
    assert np.abs(one - many).max() < 2e-3  # float16 storage rounding at most


def test_reduced_precision_scores_agree_with_fp32(vitb32, fashion_train, tmp_path):
    """The autocast path that CUDA runs in fp16, exercised on the CPU in bf16: the
    image-text similarities the scores come from agree with fp32 within 1e-2."""
    import numpy as np

    from ipo_cli.data import folders as ds
    from ipo_cli.clip.model import ClipModel

    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    paths = data.paths[:24]
    bf16 = ClipModel(vitb32.spec, vitb32.model, vitb32.preprocess, vitb32.tokenizer, "cpu", precision="bf16")
    assert bf16.image_key("abc") != vitb32.image_key("abc")  # never mixed in the cache
    full, _, _ = vitb32.embed_images(paths)
    low, _, _ = bf16.embed_images(paths)
    texts = vitb32.encode_texts([f"a photo of a {c}." for c in data.classnames])
    diff = np.abs(full @ texts.T - low @ texts.T).max()
    assert 0 < diff < 1e-2, diff  # not identical (bf16 really ran), but close
    with np.errstate(all="ignore"):
        assert (np.argmax(full @ texts.T, 1) == np.argmax(low @ texts.T, 1)).mean() >= 0.9


def test_cuda_defaults_to_fp16_autocast(vitb32):
    import torch

    from ipo_cli.clip.model import ClipModel

    on_cuda = ClipModel(vitb32.spec, vitb32.model, vitb32.preprocess, vitb32.tokenizer, "cuda")
    assert on_cuda.precision == "fp16" and vitb32.precision == "fp32"
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        ctx = on_cuda._autocast()
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.float16


def test_threaded_decoding_keeps_order_and_reports_unreadable_files(vitb32, fashion_train, tmp_path):
    import numpy as np

    from ipo_cli.data import folders as ds

    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    paths = data.paths[:5] + [broken] + data.paths[5:11]
    emb, kept, failures = vitb32.embed_images(paths, batch_size=4)
    assert kept == [i for i in range(len(paths)) if i != 5] and len(failures) == 1
    one_by_one = np.stack([vitb32.embed_images([p])[0][0] for p in paths if p != broken])
    assert np.allclose(emb, one_by_one, atol=1e-3)


def test_warm_and_cold_paths_agree_on_every_identity(tiny_config, tiny_checkpoint):
    """One parser names the weights for both paths: the warm one (no open_clip) must give
    exactly the identity the cold one writes its cache keys under, or warm runs miss."""
    from ipo_cli.clip.spec import light_identity

    for model, weights in ((str(tiny_config), tiny_checkpoint), (str(tiny_config), None),
                           ("ViT-B-32", tiny_checkpoint), ("ViT-B-32:openai", None), ("hf-hub:org/name", None)):
        assert light_identity(model, weights) == parse_clip(model, weights).identity, model
    for model, weights in (("ViT-B-32", None), ("ViT-B-32:openai", tiny_checkpoint), ("hf-hub:nope", None),
                           ("missing.json", None), ("ViT-B-32", "/no/such/file.pt")):
        assert light_identity(model, weights) is None, model
        with pytest.raises(IpoError):
            parse_clip(model, weights)
