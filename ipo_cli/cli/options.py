"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ImagesOpt = Annotated[Path, typer.Option("--images", help="Folder with one sub-folder per class (or the image root of --split).")]
ClassesOpt = Annotated[Optional[Path], typer.Option("--classes", help="Text file, one class name per line ('#' comments allowed).")]
SplitOpt = Annotated[Optional[Path], typer.Option("--split", help="A CoOp split file (split_zhou_*.json); paths are relative to the images folder.")]
ClipOpt = Annotated[str, typer.Option("--clip", help="open_clip model: ARCH:TAG (ViT-B-16:openai), hf-hub:ORG/NAME, ARCH with --clip-weights, or a model config .json.")]
ClipWeightsOpt = Annotated[Optional[Path], typer.Option("--clip-weights", help="A local open_clip checkpoint for the architecture named by --clip.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder (default: $IPO_CACHE_DIR or the user cache directory).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where CLIP runs: auto (CUDA if available), cpu, cuda or cuda:N.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", help="A CoOp dataset (ImageNet, Caltech101, OxfordPets, StanfordCars, Flowers102, Food101, FGVCAircraft, SUN397, DTD, EuroSAT, UCF101; ImageNetV2/Sketch/A/R for eval) under --data-root, laid out as CoOp's DATASETS.md says.")]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help="The folder that holds CoOp's dataset folders ($DATA), with --dataset.")]
OutsideRootOpt = Annotated[bool, typer.Option("--allow-outside-root", help="Let --split entries point outside the images folder (.., absolute paths).")]
GpuLayersOpt = Annotated[Optional[int], typer.Option("--gpu-layers", min=-1, help="llama.cpp layers to offload to the GPU: -1 all, 0 none (default: all when llama.cpp was built with GPU offload, else 0).")]
