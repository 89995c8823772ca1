"""CoOp's cached samples (split_fewshot/shot_K-seed_S.pkl, ImageNet's preprocessed.pkl),
read with the restricted unpickler: pickles made by a stand-in Datum class shaped like
Dassl's (dassl/data/datasets/base_dataset.py), and hostile pickles refused unrun."""

import json
import os
import pickle
import sys
import types

import pytest
from PIL import Image

from ipo_cli.data import coop, coop_cache, sampling
from ipo_cli.errors import IpoError


class Datum:
    """Dassl's Datum: four attributes set in __init__, read through properties."""

    def __init__(self, impath="", label=0, domain=0, classname=""):
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath


@pytest.fixture
def dassl_datum(monkeypatch):
    """Datum pickled under Dassl's module path, as CoOp's files record it."""
    module = types.ModuleType("dassl.data.datasets.base_dataset")
    Datum.__module__ = module.__name__
    Datum.__qualname__ = "Datum"
    module.Datum = Datum
    for name in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return Datum


@pytest.fixture
def caltech(tmp_path):
    """A Caltech101 laid out as CoOp's DATASETS.md says, with two classes of three images."""
    root = tmp_path / "data"
    images = root / "caltech-101" / "101_ObjectCategories"
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(["face", "leopard"]):
        (images / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (label * 200, i * 50, 0)).save(images / name / f"image_{i:04d}.jpg")
            split["train" if i < 2 else "val"].append([f"{name}/image_{i:04d}.jpg", label, name])
    split["test"] = list(split["val"])
    (root / "caltech-101" / "split_zhou_Caltech101.json").write_text(json.dumps(split))
    return root


def write_fewshot(root, datum, shots, seed, protocol=pickle.HIGHEST_PROTOCOL, foreign="/home/someone/DATA"):
    """What CoOp's caltech101.py writes: {"train": [Datum], "val": [Datum]} with absolute paths."""
    def d(name, i, label):
        return datum(impath=f"{foreign}/caltech-101/101_ObjectCategories/{name}/image_{i:04d}.jpg",
                     label=label, classname=name)
    data = {"train": [d("leopard", 1, 1), d("face", 0, 0)], "val": [d("face", 2, 0), d("leopard", 2, 1)]}
    path = coop_cache.fewshot_file(root / "caltech-101", shots, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_cached_sample_is_used_with_paths_mapped_onto_this_machine(caltech, dassl_datum, protocol):
    path = write_fewshot(caltech, dassl_datum, 1, 3, protocol)
    full = coop.load("Caltech101", caltech, "train")
    sample = sampling.cached_sample("Caltech101", caltech, 1, 3, full)
    assert sample.path == path
    images = caltech / "caltech-101" / "101_ObjectCategories"
    assert sample.train.paths == [images / "leopard" / "image_0001.jpg", images / "face" / "image_0000.jpg"]
    assert sample.train.labels == [1, 0] and sample.val.labels == [0, 1]
    assert sample.train.classnames == full.classnames and sample.train.image_loading == "reference"
    assert full.image_loading == "reference"  # --dataset images load as the reference code loads them
    assert sampling.cached_sample("Caltech101", caltech, 2, 3, full) is None  # no file for 2 shots
    assert sampling.sample_file("Caltech101", caltech, 1, 3) == path


def test_a_path_that_maps_to_no_file_is_named(caltech, dassl_datum):
    write_fewshot(caltech, dassl_datum, 1, 1)
    full = coop.load("Caltech101", caltech, "train")
    (caltech / "caltech-101" / "101_ObjectCategories" / "face" / "image_0000.jpg").unlink()
    with pytest.raises(IpoError, match="names /home/someone/DATA/caltech-101/101_ObjectCategories/face/image_0000.jpg"):
        sampling.cached_sample("Caltech101", caltech, 1, 1, full)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["system", "eval", "global"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    if payload == "system":
        data = pickle.dumps({"train": [Evil(marker)], "val": []})
    elif payload == "eval":
        data = pickle.dumps({"train": [], "val": []})  # then build builtins.eval by hand
        data = b"cbuiltins\neval\n(Vopen(%r,'w')\ntR." % str(marker).encode()
    else:
        data = pickle.dumps(IpoError)
    f = tmp_path / "shot_1-seed_1.pkl"
    f.write_bytes(data)
    with pytest.raises(IpoError, match="never holds; nothing was run") as info:
        coop_cache.load_pickle(f)
    assert "\n" not in str(info.value) and not marker.exists()


def test_a_truncated_pickle_is_a_one_line_error(tmp_path, dassl_datum):
    f = tmp_path / "x.pkl"
    f.write_bytes(pickle.dumps({"train": [dassl_datum("/a/b.jpg", 0)]})[:-5])
    with pytest.raises(IpoError, match="is not a CoOp sample file"):
        coop_cache.load_pickle(f)


def test_imagenets_preprocessed_listing_fixes_the_order(tmp_path, dassl_datum):
    """imagenet/preprocessed.pkl ({"train", "test"}) replaces the folder listing."""
    root = tmp_path / "data"
    images = root / "imagenet" / "images"
    for part in ("train", "val"):
        for wnid in ("n01", "n02"):
            (images / part / wnid).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8)).save(images / part / wnid / f"{i}.JPEG")
    (root / "imagenet" / "classnames.txt").write_text("n01 tench\nn02 goldfish\n")
    other = "/mnt/old/imagenet/images"
    entries = {"train": [dassl_datum(f"{other}/train/n02/1.JPEG", 1, 0, "goldfish"),
                         dassl_datum(f"{other}/train/n01/0.JPEG", 0, 0, "tench")],
               "test": [dassl_datum(f"{other}/val/n01/1.JPEG", 0, 0, "tench"),
                        dassl_datum(f"{other}/val/n02/0.JPEG", 1, 0, "goldfish")]}
    (root / "imagenet" / "preprocessed.pkl").write_bytes(pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL))
    train = coop.load("ImageNet", root, "train")
    assert train.paths == [images / "train" / "n02" / "1.JPEG", images / "train" / "n01" / "0.JPEG"]
    assert train.classnames == ["tench", "goldfish"] and train.labels == [1, 0]
    assert coop.load("ImageNet", root, "test").paths[0] == images / "val" / "n01" / "1.JPEG"


def test_the_plan_says_which_sample_was_used(caltech, dassl_datum):
    from ipo_cli.data import sampling
    from ipo_cli.optimize.request import Request

    write_fewshot(caltech, dassl_datum, 1, 2)
    request = Request(images="x", dataset="Caltech101", data_root=str(caltech), shots=1, seed=2)
    assert sampling.sample_source(request).startswith("CoOp's cached sample ")
    full, train, _ = sampling.sample(request)
    assert [p.name for p in train.paths] == ["image_0001.jpg", "image_0000.jpg"] and train.labels == [1, 0]
    fresh = Request(images="x", dataset="Caltech101", data_root=str(caltech), shots=1, seed=2, fresh_sample=True)
    assert sampling.sample_source(fresh) == "drawn with seed 2"
