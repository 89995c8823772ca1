"""`ipo embed`: every image embedding of a folder, a split or a webdataset folder, into
ipo's cache (and with --out, clip-retrieval's layout), here or on a Ray cluster."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ipo_cli.cli.console import err, out, progress_bar, status, warn
from ipo_cli.cli.options import (
    CLIP,
    DATA,
    OUTPUT,
    CacheDirOpt,
    ClipOpt,
    ClipWeightsOpt,
    DeviceOpt,
    JsonOpt,
    OutsideRootOpt,
    RayOpt,
    RayWorkersOpt,
    SplitOpt,
    UnitSizeOpt,
)
from ipo_cli.cli.output import show


def embed_cmd(
    images: Annotated[Path, typer.Argument(help="A folder of images (searched recursively), the image root of --split, or a CLIP_benchmark webdataset folder.")],
    clip: ClipOpt = None,
    clip_weights: ClipWeightsOpt = None,
    split: SplitOpt = None,
    split_part: Annotated[str, typer.Option("--split-part", help="Which part of --split, or which split of a webdataset folder.", rich_help_panel=DATA)] = "test",
    allow_outside_root: OutsideRootOpt = False,
    image_loading: Annotated[Optional[str], typer.Option("--image-loading", help="How images are decoded: reference (the default for webdataset folders) or ipo (the default otherwise); part of the cache key, as in ipo eval.", rich_help_panel=DATA)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.", rich_help_panel=CLIP)] = 32,
    device: DeviceOpt = "auto",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Also write clip-retrieval's layout here: img_emb/img_emb_{i}.npy and metadata/metadata_{i}.parquet, one partition per unit.", rich_help_panel=OUTPUT)] = None,
    ray: RayOpt = None,
    ray_workers: RayWorkersOpt = None,
    unit_size: UnitSizeOpt = 256,
    cache_dir: CacheDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compute every image embedding into ipo's cache, so later eval, classify, optimize and
    report on these images are warm; resumable (a rerun skips what is done)."""
    from ipo_cli import cache
    from ipo_cli.clip.spec import DEFAULT_CLIP
    from ipo_cli.cluster import embed as cluster_embed
    from ipo_cli.cluster.executor import open_executor, ray_address
    from ipo_cli.data import clip_retrieval

    images_set = cluster_embed.image_set(images, split, split_part, allow_outside_root, image_loading, cache_dir)
    if out_dir is not None:
        out_dir = clip_retrieval.check_out(out_dir)
    model = clip or DEFAULT_CLIP
    store = cache.Store(cache.cache_root(cache_dir), "embeddings")
    units = cluster_embed.plan_units(images_set.paths, unit_size, batch_size, images_set.origins)
    address = ray_address(ray)
    with status("connecting to the Ray cluster" if address else f"loading CLIP {model}"):
        executor = open_executor(address, workers=ray_workers, device=device)
    try:
        embedder = cluster_embed.embedder_for(executor, model, clip_weights, store, images_set, device, batch_size)
        with status(f"loading CLIP {model}" + (" on the workers" if address else "")):
            embedder.card  # noqa: B018 - the model loaded (on every worker) before the clock starts
        started = time.perf_counter()
        done = 0
        with progress_bar("embedding images", len(images_set.paths), quiet=as_json) as advance:
            def progress(n: int) -> None:
                nonlocal done
                done += n
                rate = done / max(time.perf_counter() - started, 1e-9)
                advance(n, status=f"{rate:.1f} images/s")

            failures = []
            for result in embedder.run(units, progress):
                failures.extend(result.failures)
                index = result.unit.index
                if out_dir is not None and not (result.cached and clip_retrieval.has_partition(out_dir, index, len(units))):
                    clip_retrieval.write_partition(out_dir, index, len(units), result.embeddings,
                                                   [result.unit.paths[k] for k in result.kept])
        seconds = time.perf_counter() - started
    finally:
        executor.close()
    for failure in failures:
        warn(f"skipped unreadable image {failure.path}: {failure.reason}")
    stats = embedder.stats
    for line in stats.errors:
        warn(f"failed on the cluster: {line}")
    summary: dict[str, Any] = {
        "clip": embedder.identity, "images": len(images_set.paths), "embedded": stats.images_computed,
        "cached": stats.images_cached, "unreadable": [{"path": str(f.path), "reason": f.reason} for f in failures],
        "units": stats.units, "units_cached": stats.units_cached, "units_failed": stats.units_failed,
        "seconds": round(seconds, 3), "images_per_second": round(stats.images_computed / seconds, 2) if seconds else None,
        "ray": address, "workers": executor.workers, "out": str(out_dir) if out_dir else None,
    }

    def render(s: dict[str, Any]) -> None:
        where = f" on Ray ({s['ray']}, {s['workers']} worker(s))" if s["ray"] else ""
        out.print(f"{s['images']} images: {s['embedded']} embedded{where}, {s['cached']} already in the cache, "
                  f"{len(s['unreadable'])} unreadable; {s['images_per_second'] or 0:.1f} images/s")
        if s["out"]:
            err.print(f"clip-retrieval layout written to {s['out']} ({s['units']} partitions)")

    show(summary, as_json, render)
    if stats.errors:
        from ipo_cli.errors import IpoError

        raise IpoError(f"{len(stats.errors)} unit(s) failed on the cluster; the others are in the cache",
                       "run the same command again to retry them")
