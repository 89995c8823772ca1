"""CLIP_benchmark's webdataset folders as an image source: shards built from real images
(the layout of clip_benchmark/webdataset_builder.py, convert_dataset: "s%07d" keys, the
image under its extension, the label as .cls text, nshards.txt, classnames.txt,
zeroshot_classification_templates.txt) score as the same images in folders do."""

import io
import json
import tarfile

import pytest

from conftest import run_ipo
from ipo_cli.data import folders as ds
from ipo_cli.data import shards
from ipo_cli.errors import IpoError


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_shards(folder, data, split="test", per_shard=25, templates=("a photo of a {c}.", "a {c}.")):
    """Write `data` (an ipo Dataset) as CLIP_benchmark writes a dataset: shards of at most
    `per_shard` samples (its ShardWriter's maxcount), then nshards.txt."""
    (folder / split).mkdir(parents=True)
    (folder / "classnames.txt").write_text("\n".join(data.classnames) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    n = 0
    for start in range(0, len(data.items), per_shard):
        with tarfile.open(folder / split / f"{n}.tar", "w") as tar:
            for index, item in enumerate(data.items[start:start + per_shard], start):
                ext = item.path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
                _add(tar, f"s{index:07d}.{ext}", item.path.read_bytes())
                _add(tar, f"s{index:07d}.cls", str(item.label).encode())
        n += 1
    (folder / split / "nshards.txt").write_text(f"{n}\n")
    return folder


def test_shards_read_as_the_same_images_and_labels(tmp_path, fashion_train):
    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    folder = build_shards(tmp_path / "wds_fashion", data)
    assert shards.is_shard_folder(folder) and not shards.is_shard_folder(fashion_train)
    read = ds.load_dataset(folder, split_part="test", cache_dir=tmp_path / "cache")
    assert read.classnames == data.classnames and read.labels == data.labels
    assert [p.read_bytes() for p in read.paths] == [p.read_bytes() for p in data.paths]
    assert read.image_loading == "reference" and len(list((folder / "test").glob("*.tar"))) == 3
    with pytest.raises(IpoError, match="has no 'train' split.*--split-part: test"):
        ds.load_dataset(folder, split_part="train", cache_dir=tmp_path / "cache")


def test_eval_scores_shards_as_the_same_folder_and_shares_the_cache(tmp_path, fashion_train, tiny_config,
                                                                    tiny_checkpoint):
    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    folder = build_shards(tmp_path / "wds_fashion", data)
    templates = folder / "zeroshot_classification_templates.txt"  # its own templates, as a prompts file
    clip = ["--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--json"]
    from_shards = run_ipo("eval", templates, "--images", folder, *clip)
    assert from_shards.returncode == 0, from_shards.stderr
    from_folder = run_ipo("eval", templates, "--images", fashion_train, "--classes", fashion_train / "classes.txt",
                          "--image-loading", "reference", *clip)
    assert from_folder.returncode == 0, from_folder.stderr
    a, b = json.loads(from_shards.stdout), json.loads(from_folder.stdout)
    assert [r["metrics"] for r in a["results"]] == [r["metrics"] for r in b["results"]]
    assert a["cache"]["images_computed"] == len(data.items) and b["cache"]["images_cached"] == len(data.items)


@pytest.mark.parametrize("content, message", [
    ("x", "should hold the number of shards"),
    ("0", "should hold the number of shards"),
    ("2", "is missing"),
])
def test_bad_shard_counts_are_one_line_errors(tmp_path, fashion_train, content, message):
    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    folder = build_shards(tmp_path / "w", data, per_shard=1000)
    (folder / "test" / "nshards.txt").write_text(content)
    with pytest.raises(IpoError, match=message):
        ds.load_dataset(folder, split_part="test", cache_dir=tmp_path / "cache")


def test_a_label_beyond_the_classes_and_a_broken_tar_are_refused(tmp_path, fashion_train):
    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    folder = build_shards(tmp_path / "w", data, per_shard=1000)
    (folder / "classnames.txt").write_text("t-shirt\ntrouser\n")
    with pytest.raises(IpoError, match="has label 2, but there are 2 classes"):
        ds.load_dataset(folder, split_part="test", cache_dir=tmp_path / "cache")
    (folder / "test" / "0.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(IpoError, match="is not a readable tar file"):
        ds.load_dataset(folder, split_part="test", cache_dir=tmp_path / "cache")


def test_describe_collects_a_shard_folders_images(tmp_path, fashion_train):
    """`ipo describe --images wds_NAME` captions the shard images (its train split, else the first)."""
    from ipo_cli.llm.captions import collect_images

    data = ds.load_dataset(fashion_train, fashion_train / "classes.txt")
    folder = build_shards(tmp_path / "wds_fashion", data)
    paths, labels, classnames = collect_images(folder)
    assert len(paths) == len(data.items) and classnames == data.classnames
    assert labels == [data.classnames[label] for label in data.labels]
