import json
import random
from pathlib import Path

import pytest
from PIL import Image

from ipo_cli.data import folders as ds
from ipo_cli.errors import IpoError


def make_folder(root: Path, classes: dict[str, int], ext: str = ".png") -> Path:
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(root / name / f"{i}{ext}")
    return root


def test_classes_file_ignores_blank_lines_and_comments(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# pets\ncat\n\n  dog  # good boy\nsnow leopard\n")
    assert ds.read_classes(f) == ["cat", "dog", "snow leopard"]


@pytest.mark.parametrize(
    "text, message",
    [("", "names no class"), ("# only a comment\n\n", "names no class"), ("cat\nCat\n", "twice"), ("snow_leopard\nSnow Leopard\n", "twice")],
)
def test_bad_classes_files_are_refused(tmp_path, text, message):
    f = tmp_path / "classes.txt"
    f.write_text(text)
    with pytest.raises(IpoError, match=message):
        ds.read_classes(f)


def test_missing_classes_file(tmp_path):
    with pytest.raises(IpoError, match="does not exist"):
        ds.read_classes(tmp_path / "nope.txt")


def test_names_match_folders_ignoring_case_spaces_underscores_and_dashes(tmp_path):
    root = make_folder(tmp_path / "imgs", {"Snow_Leopard": 2, "t-shirt": 1, "ankle boot": 3})
    data = ds.load_folder(root, ["snow leopard", "T Shirt", "ankle-boot"])
    assert data.classnames == ["snow leopard", "T Shirt", "ankle-boot"]
    assert [data.labels.count(i) for i in range(3)] == [2, 1, 3]


def test_unmatched_class_names_are_all_listed(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cat": 1, "dog": 1})
    with pytest.raises(IpoError) as info:
        ds.load_folder(root, ["cat", "dog", "zebra", "yak"])
    assert "zebra" in str(info.value) and "yak" in str(info.value)


def test_folder_matching_no_class_is_refused(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cat": 1, "dog": 1, "misc": 1})
    with pytest.raises(IpoError, match="misc"):
        ds.load_folder(root, ["cat", "dog"])


def test_class_without_images_is_refused(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cat": 1, "dog": 0})
    (root / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(IpoError, match="no images.*dog"):
        ds.load_folder(root)


@pytest.mark.parametrize("setup", ["missing", "empty", "file"])
def test_bad_images_folder(tmp_path, setup):
    target = tmp_path / "imgs"
    if setup == "empty":
        target.mkdir()
    elif setup == "file":
        target.write_text("x")
    with pytest.raises(IpoError):
        ds.load_folder(target)


def test_without_classes_file_every_folder_is_a_class(tmp_path):
    root = make_folder(tmp_path / "imgs", {"b_class": 1, "a_class": 2})
    data = ds.load_folder(root)
    assert data.classnames == ["a class", "b class"]
    assert data.labels == [0, 0, 1]


def test_all_image_formats_are_listed(tmp_path):
    root = tmp_path / "imgs" / "cat"
    root.mkdir(parents=True)
    for ext in ["jpg", "JPEG", "png", "webp", "bmp", "gif"]:
        Image.new("RGB", (8, 8)).save(root / f"x.{ext}", format={"jpg": "JPEG", "JPEG": "JPEG"}.get(ext, ext.upper()))
    (root / "readme.md").write_text("skip me")
    assert len(ds.load_folder(tmp_path / "imgs").items) == 6


def test_rgba_is_composited_on_white(tmp_path):
    path = tmp_path / "a.png"
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    img.save(path)
    out = ds.load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_grayscale_and_palette_become_rgb(tmp_path):
    Image.new("L", (4, 4), 100).save(tmp_path / "g.png")
    pal = Image.new("P", (4, 4), 3)
    pal.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 200, 0, 0] + [0] * 756)
    pal.save(tmp_path / "p.gif")
    assert ds.load_image(tmp_path / "g.png").getpixel((0, 0)) == (100, 100, 100)
    assert ds.load_image(tmp_path / "p.gif").getpixel((0, 0)) == (200, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert ds.load_image(tmp_path / "r.jpg").size == (10, 20)


def test_truncated_and_garbage_files_raise_unreadable(tmp_path):
    good = tmp_path / "good.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good, quality=95)
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    for path in (truncated, garbage):
        with pytest.raises(ds.UnreadableImage) as info:
            ds.load_image(path)
        assert info.value.path == path


def test_few_shot_follows_coop_sampling_and_is_seeded(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 10, "b": 10, "c": 10})
    data = ds.load_folder(root)
    one = ds.few_shot(data, 2, seed=1)
    assert one.items == ds.few_shot(data, 2, seed=1).items
    assert one.items != ds.few_shot(data, 2, seed=2).items
    # CoOp: random.seed(seed), then random.sample(items_of_label, k) label by label
    random.seed(1)
    expected = []
    for label, items in data.by_label().items():
        expected.extend(random.sample(items, 2))
    assert one.items == expected


def dassl_reference(train, val, shots, seed):
    """Dassl's steps, written out independently of ipo (Dassl.pytorch
    dassl/data/datasets/base_dataset.py generate_fewshot_dataset / split_dataset_by_label,
    and CoOp's datasets/*.py): the global seed, train then val with min(K, 4) shots, each
    grouped by label in order of first appearance (a defaultdict)."""
    from collections import defaultdict

    random.seed(seed)
    out = []
    for source, k in ((train, shots), (val, min(shots, 4))):
        tracker = defaultdict(list)
        for item in source:
            tracker[item[1]].append(item)
        picked = []
        for label, items in tracker.items():
            picked.extend(random.sample(items, k) if len(items) >= k else items)
        out.append(picked)
    return out


def test_sampling_equals_dassl_on_a_shuffled_split_file(tmp_path):
    """A split file whose train list is not grouped by label (as real CoOp split files are
    not always): ipo draws exactly Dassl's images, train and val, before the base cut."""
    import json

    from ipo_cli.data import sampling
    from ipo_cli.optimize.request import Request

    root = make_folder(tmp_path / "imgs", {f"class{i}": 12 for i in range(6)})
    rng = random.Random(7)
    entries = [[str(p.relative_to(root)), i, f"class{i}"] for i in range(6)
               for p in sorted((root / f"class{i}").iterdir())]
    rng.shuffle(entries)
    train_entries, val_entries = entries[:48], entries[48:]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": train_entries, "val": val_entries, "test": val_entries}))
    for shots, seed in ((1, 1), (2, 2), (16, 3)):
        request = Request(images=str(root), split=str(split), shots=min(shots, 4), seed=seed, base_novel=True,
                              select="val")
        full, train, val = sampling.sample(request)
        ref_train, ref_val = dassl_reference([tuple(e) for e in train_entries], [tuple(e) for e in val_entries],
                                             min(shots, 4), seed)
        base = {0, 1, 2}  # CoOp keeps the first ceil(6/2) labels after sampling
        assert [str(p) for p in train.paths] == [str(root / e[0]) for e in ref_train if e[1] in base]
        assert [str(p) for p in val.paths] == [str(root / e[0]) for e in ref_val if e[1] in base]


def test_too_many_shots_names_the_class(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 5, "tiny": 2})
    with pytest.raises(IpoError, match="'tiny' holds \\(2 images\\)"):
        ds.few_shot(ds.load_folder(root), 3, seed=1)


@pytest.mark.parametrize("n, base", [(2, 1), (5, 3), (10, 5), (11, 6)])
def test_base_novel_split_first_half_rounded_up(n, base):
    b, nv = ds.base_novel_labels(n)
    assert b == list(range(base)) and nv == list(range(base, n))


def test_subset_relabels_classes(tmp_path):
    root = make_folder(tmp_path / "imgs", {"a": 1, "b": 2, "c": 3})
    base, novel = ds.split_base_novel(ds.load_folder(root))
    assert base.classnames == ["a", "b"] and novel.classnames == ["c"]
    assert novel.labels == [0, 0, 0] and novel.original_labels == [2]


def write_split(tmp_path: Path, entries: dict) -> Path:
    f = tmp_path / "split_zhou_Test.json"
    f.write_text(json.dumps(entries))
    return f


def test_coop_split_file(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cat": 2, "dog": 2})
    split = write_split(tmp_path, {
        "train": [["cat/0.png", 0, "cat"], ["dog/0.png", 1, "dog"]],
        "val": [],
        "test": [["cat/1.png", 0, "cat"], ["dog/1.png", 1, "dog"], ["dog/0.png", 1, "dog"]],
    })
    data = ds.load_dataset(root, split_file=split, split_part="test")
    assert data.classnames == ["cat", "dog"]
    assert data.labels == [0, 1, 1]
    assert data.paths[0] == root / "cat/1.png"


def test_split_file_errors(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cat": 1})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(IpoError, match="not valid JSON"):
        ds.load_split(bad, root)
    missing = write_split(tmp_path, {"train": [["cat/0.png", 0, "cat"], ["cat/9.png", 0, "cat"]]})
    with pytest.raises(IpoError, match="1 missing image.*cat/9.png"):
        ds.load_split(missing, root)
    with pytest.raises(IpoError, match="no 'test' part"):
        ds.load_split(missing, root, "test")


def test_reference_loading_is_convert_rgb_only(tmp_path):
    """--image-loading reference decodes as Dassl's read_image and CLIP_benchmark do
    (`convert("RGB")`: no EXIF rotation, transparency dropped, not composited on white)."""
    from PIL import Image

    from ipo_cli.data.folders import load_image

    rgba = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    rgba.save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "clear.png", "reference").getpixel((0, 0)) == (10, 20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.new("RGB", (6, 2), (200, 0, 0)).save(tmp_path / "turned.jpg", exif=exif)
    assert load_image(tmp_path / "turned.jpg").size == (2, 6)
    assert load_image(tmp_path / "turned.jpg", "reference").size == (6, 2)


def test_the_image_cache_key_includes_the_loading(tiny_clip):
    before = tiny_clip.image_loading
    try:
        ipo_key = tiny_clip.image_key("ab" * 32)
        tiny_clip.image_loading = "reference"
        assert tiny_clip.image_key("ab" * 32) != ipo_key
    finally:
        tiny_clip.image_loading = before
    assert tiny_clip.image_key("ab" * 32) == ipo_key  # ipo's keys are those written before the choice


def test_split_files_are_checked_per_folder_with_links_and_odd_entries(tmp_path):
    """The per-folder check (one scandir a folder) says what the per-entry one said: a link
    to a file outside the root is outside, a linked folder inside is fine, an entry naming a
    folder is missing, and a million entries are not needed to see it."""
    import json

    from ipo_cli.data.folders import load_split
    from ipo_cli.errors import IpoError

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "a").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "a" / "x.png").write_bytes(b"x")
    (elsewhere / "y.png").write_bytes(b"y")
    (root / "a" / "link.png").symlink_to(elsewhere / "y.png")
    (root / "b").symlink_to(root / "a", target_is_directory=True)

    def split(*paths):
        path = tmp_path / "split.json"
        path.write_text(json.dumps({"train": [[p, 0, "a"] for p in paths]}))
        return path

    assert [p.name for p in load_split(split("a/x.png", "b/x.png"), root).paths] == ["x.png", "x.png"]
    with pytest.raises(IpoError, match="points outside the image root .*link.png"):
        load_split(split("a/x.png", "a/link.png"), root)
    assert load_split(split("a/link.png"), root, allow_outside_root=True).paths[0].name == "link.png"
    with pytest.raises(IpoError, match="1 missing image"):
        load_split(split("a/x.png", "a/.."), root)  # the root itself: not outside, not a file
    with pytest.raises(IpoError, match="points outside"):
        load_split(split("a/../../elsewhere/y.png"), root)
