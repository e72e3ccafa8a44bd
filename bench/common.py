"""Shared by the benchmarks: puts the repository on sys.path, quiets transformers."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pruner.resources import return_large_frees_to_os  # noqa: E402

return_large_frees_to_os()      # as the CLI and the dashboard do: RSS tracks live memory

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def machine() -> dict:
    """What a result was measured on: the CPU (its bfloat16 instructions decide how autocast's sums
    run: AMX and AVX512-BF16 kernels round differently), cores, torch, and the GPU where one is used."""
    import platform

    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
        info["cpu"] = names[0] if names else info["cpu"]
        info["bfloat16"] = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@contextmanager
def self_sampling(settings: dict | None = None):
    """pruner.data.SELF_SAMPLING updated with `settings` inside (the self-generated text and its
    cache key follow it), as it was after."""
    from pruner import data

    saved = dict(data.SELF_SAMPLING)
    data.SELF_SAMPLING.update(settings or {})
    try:
        yield
    finally:
        data.SELF_SAMPLING.clear()
        data.SELF_SAMPLING.update(saved)


def add_self_draw_args(parser) -> None:
    """`self_draw`'s settings on a script's command line: --seed, --windows, --data-dir."""
    parser.add_argument("--seed", type=int, default=0, help="the calibration draw")
    parser.add_argument("--windows", type=int, default=256, help="WikiText-2 windows of 128 tokens")
    parser.add_argument("--data-dir", default=str(SHARED_DATA))


def self_draw(seed: int, windows: int, data_dir, source: str = "self", samples: int = 32, length: int = 128,
              continuation: int = 0):
    """The default model, its default calibration (self-generated, 32 x 128, `seed`; or `samples` x
    `length` windows of `source`) and a WikiText-2 perplexity of the first `windows` windows of 128
    tokens -> (model, tok, ids, ppl), the setting of the #19 lever scripts (layer_reconstruction,
    weighted_refit, centered_taylor, default_lever); `continuation`: tokens the model appends to
    each window of any source but self (pruner.data.continued_ids)."""
    import torch

    from pruner import calibration_ids, load_model
    from pruner.evaluate import perplexity

    torch.manual_seed(seed)
    model, tok = load_model()[:2]
    ids = calibration_ids(tok, source, samples, length, seed=seed, data_dir_path=data_dir, model=model,
                          continuation=continuation)

    def ppl(m) -> float:
        return perplexity(m, tok, "wikitext2", 128, max_windows=windows, data_dir_path=data_dir,
                          progress=False)["ppl"]

    return model, tok, ids, ppl


def pruned_figures(model, ids, score_config, prune_config, ppl, dense: float) -> dict:
    """Prune `model` (a copy) with the configs on `ids` -> the lever scripts' figures: perplexity over
    the dense model's, the prune's seconds, the share of parameters removed and the MLP widths."""
    import time

    from pruner import prune_model

    start = time.perf_counter()
    result = prune_model(model, ids, score_config, prune_config)
    seconds = time.perf_counter() - start
    return {"dense": dense, "x_dense": ppl(result.model) / dense, "seconds": seconds,
            "params_removed": result.report["ratio_params_removed"],
            "mlp_widths": result.widths_after.set_index("layer").intermediate_size.tolist()}


def backward_through_activations(model, ids, hooks, batch_size: int = 8) -> None:
    """The next-token loss's backward over `ids` in batches with every parameter frozen (only the
    activations' gradients, which forward hooks in `hooks` (module, hook) pairs watch), leaving
    the model's requires_grad flags as they were."""
    import torch

    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    handles.append(model.model.embed_tokens.register_forward_hook(lambda m, a, out: out.requires_grad_()))
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for batch in torch.split(ids, batch_size):
            model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
