"""`--llm NAME|FILE` or `--llm-url URL`: the backend that runs a model named on the command line."""

from __future__ import annotations

from ipo_cli.llm.base import LLM
from ipo_cli.llm.llama import LlamaCppLLM
from ipo_cli.llm.openai_http import OpenAIServerLLM, check_url


def load_llm(model: str | None = None, url: str | None = None, url_model: str | None = None,
             n_ctx: int | None = None, n_threads: int | None = None, gpu_layers: int | None = None,
             machine: str = "cpu", batch: bool = True, fit_threads: bool | None = None) -> LLM:
    """`--llm NAME|FILE` or `--llm-url URL [--llm-model NAME]`; `--llm SCHEME:NAME` for a
    backend a program registered (llm/registry.py)."""
    from ipo_cli.llm import registry

    registered = None if url else registry.create(model, "llm", n_ctx=n_ctx)
    if registered is not None:
        return registered
    if url:
        check_url(url, "--llm-url")
        server = OpenAIServerLLM(url, url_model, n_ctx=n_ctx)
        server.detect()
        return server
    from ipo_cli.store.entries import default_model
    from ipo_cli.store.local import resolve

    local = resolve(model or default_model("llm", machine).name, "llm")
    return LlamaCppLLM(local.path, n_ctx=n_ctx or local.n_ctx, n_threads=n_threads, identity=local.identity,
                       gpu_layers=gpu_layers, batch=batch, fit_threads=fit_threads)
