"""Options shared by several commands, declared once, and the panels `--help` groups them in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

# The panels of `ipo CMD --help` (Typer's rich_help_panel): what the images are, how the
# search runs, which LLM/LMM, which CLIP, and what is written where.
DATA = "Data"
LOOP = "Loop"
MODELS = "Models"
CLIP = "CLIP"
OUTPUT = "Output"
CLUSTER = "Cluster"

ImagesOpt = Annotated[Path, typer.Option("--images", help="Folder with one sub-folder per class (or the image root of --split).", rich_help_panel=DATA)]
ClassesOpt = Annotated[Optional[Path], typer.Option("--classes", help="Text file, one class name per line ('#' comments allowed).", rich_help_panel=DATA)]
SplitOpt = Annotated[Optional[Path], typer.Option("--split", help="A CoOp split file (split_zhou_*.json); paths are relative to the images folder.", rich_help_panel=DATA)]
ClipOpt = Annotated[Optional[str], typer.Option("--clip", help="open_clip model: ARCH:TAG (ViT-B-16:openai), hf-hub:ORG/NAME, ARCH with --clip-weights, or a model config .json.", rich_help_panel=CLIP)]
ClipWeightsOpt = Annotated[Optional[Path], typer.Option("--clip-weights", help="A local open_clip checkpoint for the architecture named by --clip.", rich_help_panel=CLIP)]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder (default: $IPO_CACHE_DIR or the user cache directory).", rich_help_panel=OUTPUT)]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where CLIP runs: auto (CUDA if available), cpu, cuda or cuda:N.", rich_help_panel=CLIP)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.", rich_help_panel=OUTPUT)]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="A CoOp dataset (ImageNet, Caltech101, OxfordPets, StanfordCars, Flowers102, Food101, FGVCAircraft, SUN397, DTD, EuroSAT, UCF101; ImageNetV2/Sketch/A/R for eval) under --data-root, laid out as CoOp's DATASETS.md says.", rich_help_panel=DATA)]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help="The folder that holds CoOp's dataset folders ($DATA), with --dataset.", rich_help_panel=DATA)]
ImageLoadingOpt = Annotated[Optional[str], typer.Option("--image-loading", help="How images are decoded: reference (convert to RGB only, as CoOp/Dassl and CLIP_benchmark; the default for --dataset and shards) or ipo (EXIF rotation, transparency on white; the default for your folders).", rich_help_panel=DATA)]
OutsideRootOpt = Annotated[bool, typer.Option("--allow-outside-root", help="Let --split entries point outside the images folder (.., absolute paths).", rich_help_panel=DATA)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads for llama.cpp and CLIP (default: the physical cores this process may use, after its CPU affinity and cgroup quota).", rich_help_panel=MODELS)]
NoBatchOpt = Annotated[bool, typer.Option("--no-batch", help="Decode a step's candidates one after another instead of as one llama.cpp batch (other answers, same validity; slower).", rich_help_panel=MODELS)]
GpuLayersOpt = Annotated[Optional[int], typer.Option("--gpu-layers", min=-1, help="llama.cpp layers to offload to the GPU: -1 all, 0 none (default: all when llama.cpp was built with GPU offload, else 0).", rich_help_panel=MODELS)]

# The models of a run, as ipo optimize and ipo bench take them
LlmOpt = Annotated[Optional[str], typer.Option("--llm", help="LLM: catalogue or installed name, or a GGUF file (default: the catalogue's default).", rich_help_panel=MODELS)]
LlmUrlOpt = Annotated[Optional[str], typer.Option("--llm-url", help="OpenAI-compatible server instead, e.g. http://127.0.0.1:8080/v1.", rich_help_panel=MODELS)]
LlmModelOpt = Annotated[Optional[str], typer.Option("--llm-model", help="Model name to send to --llm-url.", rich_help_panel=MODELS)]
LmmOpt = Annotated[Optional[str], typer.Option("--lmm", help="Multimodal model for image descriptions: name, GGUF file, clip (CLIP's own attributes), or none.", rich_help_panel=MODELS)]
LmmUrlOpt = Annotated[Optional[str], typer.Option("--lmm-url", help="OpenAI-compatible server for descriptions.", rich_help_panel=MODELS)]
LmmModelOpt = Annotated[Optional[str], typer.Option("--lmm-model", help="Model name to send to --lmm-url.", rich_help_panel=MODELS)]

# Running the work on a Ray cluster (ipo_cli/cluster/; the [ray] extra)
RayOpt = Annotated[Optional[str], typer.Option("--ray", help="Run on a Ray cluster: its address (HOST:PORT, ray://HOST:10001, auto), or local for a private one started and stopped for this command (default: $RAY_ADDRESS, else here). Needs the [ray] extra.", rich_help_panel=CLUSTER)]
RayWorkersOpt = Annotated[Optional[int], typer.Option("--ray-workers", min=1, help="CLIP workers on the cluster (default: one per GPU, else one per CPU).", rich_help_panel=CLUSTER)]
UnitSizeOpt = Annotated[int, typer.Option("--unit-size", min=1, help="Images per unit of work with --ray, a multiple of the batch size (a webdataset shard is one unit); a rerun skips the units already in the cache.", rich_help_panel=CLUSTER)]
