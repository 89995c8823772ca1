"""ipo on a real Ray cluster (the `ray_cluster` session fixture: `ray.init` on 127.0.0.1,
2 CPUs, token authentication): `ipo embed/eval/classify/bench --ray` against real
Fashion-MNIST images with the random-weight tiny CLIP, compared with the local path
embedding by embedding; a worker killed in the middle of a unit; unreadable images; a
missing extra and an unreachable address. No part of Ray is mocked."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import RAY_TEST_KEY, run_ipo

if importlib.util.find_spec("ray") is None:  # not imported here: see the ray_cluster fixture
    pytest.skip("the [ray] extra is not installed", allow_module_level=True)
pq = pytest.importorskip("pyarrow.parquet")


def _embed(images: Path, tiny_config: Path, tiny_checkpoint: Path, cache: Path, *extra: str):
    result = run_ipo("embed", images, "--clip", tiny_config, "--clip-weights", tiny_checkpoint, "--device", "cpu",
                     "--batch-size", "8", "--unit-size", "16", "--json", *extra, env={"IPO_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result


def _layout(out: Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    emb = {p.name: np.load(p, allow_pickle=False) for p in sorted((out / "img_emb").glob("*.npy"))}
    meta = {p.name: pq.read_table(p).column("image_path").to_pylist() for p in sorted((out / "metadata").glob("*"))}
    return emb, meta


def test_embed_on_ray_equals_the_local_path_exactly_and_resumes(ray_cluster, fashion_train, tiny_config,
                                                                 tiny_checkpoint, tmp_path):
    local, _ = _embed(fashion_train, tiny_config, tiny_checkpoint, tmp_path / "c1", "--out", tmp_path / "local")
    remote, _ = _embed(fashion_train, tiny_config, tiny_checkpoint, tmp_path / "c2", "--out", tmp_path / "ray",
                       "--ray", "auto")
    assert local["images"] == remote["images"] == 60 and remote["embedded"] == 60 and remote["ray"] == "auto"
    assert remote["units"] == 4 and remote["workers"] == 2
    # clip-retrieval's layout: img_emb/img_emb_{i}.npy + metadata/metadata_{i}.parquet (image_path)
    emb_l, meta_l = _layout(tmp_path / "local")
    emb_r, meta_r = _layout(tmp_path / "ray")
    assert sorted(emb_r) == [f"img_emb_{i}.npy" for i in range(4)]
    assert sorted(meta_r) == [f"metadata_{i}.parquet" for i in range(4)]
    assert meta_l == meta_r
    for name in emb_l:  # every embedding, bit for bit
        assert emb_r[name].dtype == np.float16 and emb_r[name].shape[1] == 64
        assert np.array_equal(emb_l[name], emb_r[name])
    # the driver merged them into its own cache: a rerun computes nothing, here or there
    again, _ = _embed(fashion_train, tiny_config, tiny_checkpoint, tmp_path / "c2", "--ray", "auto")
    assert again["embedded"] == 0 and again["cached"] == 60 and again["units_cached"] == 4
    # and the local path finds the cluster's embeddings under its own keys
    warm, _ = _embed(fashion_train, tiny_config, tiny_checkpoint, tmp_path / "c2")
    assert warm["embedded"] == 0 and warm["cached"] == 60


def test_eval_and_classify_on_ray_give_the_local_results(ray_cluster, fashion_train, tiny_config, tiny_checkpoint,
                                                         tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a photo of a {}.", "a blurry photo of a {}."]))
    common = ["--clip", str(tiny_config), "--clip-weights", str(tiny_checkpoint), "--device", "cpu",
              "--batch-size", "8"]
    results = []
    for cache, ray in (("e1", []), ("e2", ["--ray", "auto", "--unit-size", "16", "--ray-workers", "1"])):
        r = run_ipo("eval", prompts, "--images", fashion_train, "--classes", fashion_train / "classes.txt", *common,
                    "--json", *ray, env={"IPO_CACHE_DIR": str(tmp_path / cache)})
        assert r.returncode == 0, r.stderr
        results.append(json.loads(r.stdout))
    assert results[0]["results"] == results[1]["results"]
    assert results[1]["cache"]["images_computed"] == 60
    outs = []
    for cache, ray in (("k1", []), ("k2", ["--ray", "auto", "--unit-size", "32", "--ray-workers", "1"])):
        out = tmp_path / f"{cache}.jsonl"
        r = run_ipo("classify", fashion_train, "--prompts", prompts, "--classes", fashion_train / "classes.txt",
                    *[c for c in common if c != "--batch-size" and c != "8"], "--out", out, "--json", *ray,
                    env={"IPO_CACHE_DIR": str(tmp_path / cache)})
        assert r.returncode == 0, r.stderr
        outs.append(out)
    local = {json.loads(line)["path"]: json.loads(line) for line in outs[0].read_text().splitlines()}
    streamed = [json.loads(line) for line in outs[1].read_text().splitlines()]
    assert len(streamed) == 60 and {p["path"]: p for p in streamed} == local


def test_a_worker_killed_in_the_middle_of_a_unit_is_retried_without_duplicate_or_gap(
        ray_cluster, fashion_train, tiny_config, tiny_checkpoint, tmp_path):
    from ipo_cli import cache
    from ipo_cli.cluster.clip_work import ClipWork
    from ipo_cli.cluster.embed import Embedder, plan_units
    from ipo_cli.cluster.executor import LocalExecutor
    from ipo_cli.cluster.ray_executor import RayExecutor
    from ipo_cli.data.folders import list_images

    paths = list_images(fashion_train)
    units = plan_units(paths, 16, 8)
    marker = tmp_path / "die-once"
    marker.write_text("")
    got = {}
    for name, executor, fault in (("local", LocalExecutor(), None), ("ray", RayExecutor("auto"), str(marker))):
        work = ClipWork(str(tiny_config), str(tiny_checkpoint), "cpu", "ipo", 8, fault_marker=fault)
        embedder = Embedder(executor, work, cache.Store(tmp_path / name, "embeddings"))
        try:
            results = list(embedder.run(units))
        finally:
            executor.close()
        assert embedder.stats.errors == []
        assert sorted(r.unit.index for r in results) == list(range(len(units)))  # each unit once
        got[name] = {r.unit.index: r.embeddings for r in results}
    assert not marker.exists()  # a worker did die in the middle of a unit
    for index, rows in got["local"].items():
        assert rows.shape == (len(units[index].paths), 64)
        assert np.array_equal(rows, got["ray"][index])


def test_an_unreadable_image_on_a_worker_is_todays_warning(ray_cluster, fashion_train, tiny_config,
                                                           tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(fashion_train, images)
    (images / "coat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    summary, result = _embed(images, tiny_config, tiny_checkpoint, tmp_path / "c", "--ray", "auto", "--ray-workers",
                             "1")
    assert summary["embedded"] == 60 and [u["path"] for u in summary["unreadable"]] == [
        str(images / "coat" / "broken.png")]
    assert "skipped unreadable image" in result.stderr and "broken.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_on_ray_runs_each_cell_as_a_task_and_reports_a_failing_one(ray_cluster, tmp_path, tiny_config,
                                                                        tiny_checkpoint):
    from servers import FakeOpenAI
    from test_presets import coop_split_dataset

    data = tmp_path / "data"
    coop_split_dataset(data, "DTD", ["banded", "blotchy", "braided", "bubbly"])
    coop_split_dataset(data, "EuroSAT", ["Forest", "Highway", "River", "SeaLake"])
    (data / "eurosat" / "split_zhou_EuroSAT.json").write_text("{not json")  # this cell fails
    out = tmp_path / "bench"
    with FakeOpenAI(key=RAY_TEST_KEY, reply=lambda p: f"<INS>a photo number {p['seed'] % 97} of a <CLASS>.</INS>") as api:
        result = run_ipo("bench", "--data-root", data, "--datasets", "DTD,EuroSAT", "--seeds", "1", "--steps", "1",
                         "--candidates", "2", "--lmm", "none", "--clip", tiny_config, "--clip-weights",
                         tiny_checkpoint, "--out", out, "--llm-url", api.url + "/v1", "--ray", "auto", "--json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert set(table["datasets"]) == {"DTD"}, table.get("failed")
    assert list(table["failed"]) == ["EuroSAT/seed1"]
    assert "EuroSAT/seed1" in (out / "table.md").read_text()
    assert json.loads((out / "DTD" / "seed1" / "summary.json").read_text())["base_novel"]


def _ipo_subprocess(*args: str, guard: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    code = f"import sys; {guard}sys.argv = ['ipo'] + sys.argv[1:]; from ipo_cli.entry import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=120)


def test_without_the_extra_ray_is_one_line_and_help_never_imports_it(fashion_train, tmp_path):
    result = _ipo_subprocess("embed", fashion_train, "--ray", "local", guard="sys.modules['ray'] = None; ")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "ipo-cli[ray]" in result.stderr
    code = ("import sys; sys.argv = ['ipo', 'embed', '--help']\nfrom ipo_cli.entry import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('ray' in sys.modules, file=sys.stderr)")
    helped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "--ray" in helped.stdout and helped.stderr.strip().splitlines()[-1] == "False"


def test_an_unreachable_address_is_one_line(fashion_train, tiny_config, tiny_checkpoint):
    result = _ipo_subprocess("embed", fashion_train, "--clip", tiny_config, "--clip-weights", tiny_checkpoint,
                             "--ray", "127.0.0.1:9", env={"RAY_gcs_rpc_server_connect_timeout_s": "2"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "127.0.0.1:9" in result.stderr


MID_CONFIG = {  # slow enough on a CPU to stop the driver in the middle of the work
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 256, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_a_driver_killed_attaches_again_and_redoes_no_finished_unit(ray_cluster, tmp_path):
    """A separate `ipo embed --ray HOST:PORT` process (the real attach path, with the cluster's
    token from the environment) is killed with SIGKILL once a unit has landed; the same
    command again takes every finished unit from the cache, and every image is in exactly one
    partition."""
    import signal
    import time

    from fashion_mnist import export

    images = export(tmp_path / "images", "train", per_class=10)
    config = tmp_path / "mid-clip.json"
    config.write_text(json.dumps(MID_CONFIG))
    cache, out = tmp_path / "cache", tmp_path / "ray"
    args = [sys.executable, "-m", "ipo_cli", "embed", str(images), "--clip", str(config), "--device", "cpu",
            "--batch-size", "8", "--unit-size", "8", "--out", str(out), "--json", "--ray", ray_cluster]
    env = {**os.environ, "IPO_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list((out / "img_emb").glob("*.npy")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    landed = len(list((out / "img_emb").glob("*.npy")))
    assert 1 <= landed < 13  # killed in the middle
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["units"] == 13 and summary["units_cached"] >= landed and summary["embedded"] > 0
    assert summary["embedded"] + summary["cached"] == 100
    from ipo_cli.data.folders import list_images

    emb, meta = _layout(out)
    assert len(emb) == len(meta) == 13
    listed = [p for name in sorted(meta) for p in meta[name]]
    assert sorted(listed) == sorted(str(p) for p in list_images(images))  # no duplicate, no gap
    for name in sorted(emb):
        rows = emb[name]
        partition = meta["metadata_" + name[len("img_emb_"):-len(".npy")] + ".parquet"]
        assert rows.shape == (len(partition), 64) and rows.dtype == np.float16
        assert np.isfinite(rows.astype(np.float32)).all()


def _descendants(pid: int) -> list[int]:
    found = [int(x) for x in subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                                            text=True).stdout.split()]
    return found + [d for child in found for d in _descendants(child)]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def test_ctrl_c_on_the_driver_stops_its_private_cluster_and_keeps_the_cache_consistent(tmp_path):
    """`--ray local`: ipo starts a private cluster (token in its environment only); Ctrl-C in
    the middle is exit 130 with one line, every process of that cluster is gone, and the
    units that landed are not computed again."""
    import signal
    import time

    from fashion_mnist import export

    images = export(tmp_path / "images", "train", per_class=10)
    config = tmp_path / "mid-clip.json"
    config.write_text(json.dumps(MID_CONFIG))
    out = tmp_path / "out"
    args = ["embed", str(images), "--clip", str(config), "--device", "cpu", "--batch-size", "8", "--unit-size", "8",
            "--out", str(out), "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["IPO_CACHE_DIR"] = str(tmp_path / "cache")
    token_file = Path.home() / ".ray" / "auth_token"  # where Ray 2.60 would write a local cluster's token
    had_token = token_file.exists()
    proc = subprocess.Popen([sys.executable, "-m", "ipo_cli", *args, "--ray", "local"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list((out / "img_emb").glob("*.npy")):
        time.sleep(0.05)
    cluster = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.count("\n") == 1, stderr
    landed = len(list((out / "img_emb").glob("*.npy")))
    assert cluster and 1 <= landed < 13
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in cluster):
        time.sleep(0.2)
    assert not any(_alive(p) for p in cluster)  # the private cluster was stopped
    assert had_token or not token_file.exists()  # its token lived in its environment only
    again = run_ipo(*args, env={"IPO_CACHE_DIR": str(tmp_path / "cache")})  # here, without Ray
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["units_cached"] >= landed and summary["embedded"] + summary["cached"] == 100


class VisibleDevices:
    """A work that reports the CUDA_VISIBLE_DEVICES its worker was given."""

    def setup(self) -> None:
        pass

    def __call__(self, unit: int) -> str | None:
        return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_logical_gpus_give_each_worker_its_own_cuda_visible_devices(ray_cluster):
    """The cluster declares 2 GPUs on a CPU machine; with --device auto there is one worker
    per GPU (num_gpus=1 each, bench cells likewise), and Ray hands each its own device."""
    from ipo_cli.cluster.ray_executor import RayExecutor

    executor = RayExecutor("auto")
    try:
        assert (executor.gpus, executor.gpus_per_worker, executor.workers) == (2.0, 1.0, 2)
        actors = [o.value for o in executor.map_units([0, 1, 2, 3], VisibleDevices())]
        tasks = [o.value for o in executor.map_units([0, 1], VisibleDevices(), stateful=False)]
    finally:
        executor.close()
    assert sorted(set(actors)) == ["0", "1"]
    assert all(t in ("0", "1") for t in tasks)
    cpu = RayExecutor("auto", device="cpu")
    try:
        assert (cpu.gpus_per_worker, cpu.workers) == (0.0, 2)  # --device cpu: CPU workers only
    finally:
        cpu.close()


def test_shard_units_on_ray_equal_the_local_path_and_a_node_extracts_what_it_lacks(
        ray_cluster, fashion_train, tiny_config, tiny_checkpoint, tmp_path):
    """A webdataset folder: one unit per shard; a node without the driver's extracted images
    writes them itself, to the same content-addressed names, through the bounded store."""
    from test_shards import build_shards

    from ipo_cli.cluster.clip_work import _extract
    from ipo_cli.data import folders, shards

    folder = build_shards(tmp_path / "wds", folders.load_folder(fashion_train), per_shard=20)
    local, _ = _embed(folder, tiny_config, tiny_checkpoint, tmp_path / "c1", "--out", tmp_path / "local")
    remote, _ = _embed(folder, tiny_config, tiny_checkpoint, tmp_path / "c2", "--out", tmp_path / "ray", "--ray", "auto")
    # a unit never spans two shards: each shard of 20 in units of at most --unit-size 16
    assert local["images"] == remote["images"] == 60 and remote["units"] == 6 and remote["embedded"] == 60
    emb_l, meta_l = _layout(tmp_path / "local")
    emb_r, meta_r = _layout(tmp_path / "ray")
    assert sorted(emb_l) == sorted(emb_r)
    for name in emb_l:
        assert np.array_equal(emb_l[name], emb_r[name])
    # a node that lacks the images: they are written where the driver listed them, byte for byte
    data = shards.load_shards(folder, "test", cache_dir=tmp_path / "driver")
    wanted = [p for p, origin in data.origins.items() if origin.name == "1.tar"]
    listed = {p.name: p.read_bytes() for p in wanted}
    node = tmp_path / "node" / "shard-images"
    paths = [node / p.parent.name / p.name for p in wanted]
    _extract(folder / "test" / "1.tar", paths)
    assert {p.name: p.read_bytes() for p in paths} == listed and len(paths) == 20
