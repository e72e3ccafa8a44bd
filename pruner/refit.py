"""Damped least-squares refit of a pruned down_proj (or o_proj) on the pruned model's own inputs.

Removing MLP channels K' of a layer leaves down_proj's kept columns K to carry what the removed ones
did (removing attention heads leaves o_proj's; the same fit, on o_proj's inputs). With h (tokens, d_ff) the down_proj inputs the *partly pruned* model feeds this layer on
calibration text (earlier layers already cut and refitted), and the target y = h W^T + b the dense
down_proj's output on those same inputs, the kept columns and a bias solve

    min_{W', b'}  || y - h_K W'^T - b' ||^2  +  lam || W' - W_K ||^2,     lam = damping * mean diag(h_K^T h_K)

(damped toward the kept weights, not toward zero: a huge damping gives W' = W_K with the bias that
best replaces the removed channels, FLAP's mean compensation). Normal equations on [h_K, 1]:

    [W', b'] ([G_KK, s_K; s_K^T, n] + lam diag(1..1, 0)) = [W G_{:K} + b s_K^T + lam W_K,  W s + n b]

with G = h^T h (float32, accumulated in place), s = sum h (float64), n the token count; the
(k + 1)-square system is solved in float64.

`LayerStream` carries the calibration batches through the decoder one layer at a time (each layer
runs once on the pruned copy, plus once more where it is refitted), so the whole refit costs
about three forward passes, not one per layer.
"""

from __future__ import annotations

import torch

from .models import layers_of
from .resources import reusing_freed_memory

# measured on the default model (README, "The least-squares refit"): 0.1 overfits the calibration
# text, 1-10 all help, 3 best
REFIT_DAMPING = 3.0


class _Stop(Exception):
    pass


class LayerStream:
    """Calibration batches' hidden states entering decoder layer `at`, advanced layer by layer.

    The keyword arguments each layer receives (masks, rotary embeddings; per layer, since some
    families give sliding-window layers their own) are recorded once from a full forward."""

    @reusing_freed_memory()
    def __init__(self, model, input_ids: torch.Tensor, batch_size: int = 8):
        self.model, self.layers = model, layers_of(model)
        device = next(model.parameters()).device
        self.hidden: list[torch.Tensor] = []                 # per batch: (b, seq, d) entering layer `at`
        self.kwargs: list[list[dict]] = []                   # per batch, per layer
        self.at = 0
        for batch in torch.split(input_ids, batch_size):
            calls: list[dict] = []

            def record(module, args, kwargs, calls=calls):
                if not calls:
                    self.hidden.append(args[0].detach() if args else kwargs["hidden_states"].detach())
                calls.append({k: v for k, v in kwargs.items() if k != "hidden_states"})

            handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in self.layers]
            try:
                with torch.no_grad():
                    model.model(input_ids=batch.to(device), use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            self.kwargs.append(calls)

    @reusing_freed_memory()
    def run(self, layer: int, hook_module=None, hook=None) -> list[torch.Tensor]:
        """Layer `layer`'s outputs for every batch (the stream must be at it); with `hook`, a
        forward pre-hook on `hook_module` sees its inputs."""
        assert layer == self.at, f"the stream is at layer {self.at}, not {layer}"
        handle = hook_module.register_forward_pre_hook(hook) if hook is not None else None
        outs = []
        try:
            with torch.no_grad():
                for hidden, kwargs in zip(self.hidden, self.kwargs):
                    out = self.layers[layer](hidden, **kwargs[layer])
                    outs.append(out[0] if isinstance(out, tuple) else out)
        finally:
            if handle is not None:
                handle.remove()
        return outs

    def advance(self) -> None:
        """Run the current layer (as it is now) and move to the next."""
        self.hidden = self.run(self.at)
        self.at += 1


def _fp64(device: torch.device) -> torch.device:
    """Where float64 sums and solves run: the tensor's device, the CPU for MPS (no float64 there)."""
    return torch.device("cpu") if device.type == "mps" else device


def input_gram(stream: LayerStream, layer: int, module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(G = h^T h in float32, accumulated in place; s = sum h in float64; n) of `module`'s inputs h
    at `layer` over the stream. One (in, in) float32 matrix is held, never a float64 copy: at
    d_ff 5632 that is 127 MB (bench/prune_memory.py)."""
    acc = {"G": None, "s": None, "n": 0}

    def hook(mod, args):
        h = args[0].detach().reshape(-1, args[0].shape[-1])          # (tokens, in)
        h32 = h.float()
        if acc["G"] is None:
            acc["G"] = h32.T @ h32
        else:
            acc["G"].addmm_(h32.T, h32)
        s = h32.sum(0).to(_fp64(h.device)).double()
        acc["s"] = s if acc["s"] is None else acc["s"] + s
        acc["n"] += h.shape[0]

    stream.run(layer, module, hook)
    return acc["G"], acc["s"], acc["n"]


def refit_solution(weight: torch.Tensor, bias: torch.Tensor | None, kept: list[int], gram: torch.Tensor,
                   total: torch.Tensor, n: int, damping: float = REFIT_DAMPING) -> tuple[torch.Tensor, torch.Tensor]:
    """The refitted (out, |kept|) weight and (out,) bias of a linear layer keeping input columns
    `kept` (see the module docstring), in float64."""
    device = _fp64(weight.device)
    G = gram.to(device)                                            # (in, in), float32 or float64
    K = torch.as_tensor(kept, device=device)
    s = total.to(device).double()
    Gk = G.index_select(1, K)                                      # (in, k): the only other large copy
    k = len(kept)
    system = torch.empty(k + 1, k + 1, dtype=torch.float64, device=device)
    system[:k, :k] = Gk.index_select(0, K)
    lam = damping * system[:k, :k].diagonal().mean()
    system[:k, :k].diagonal().add_(lam)
    system[:k, k] = s[K]
    system[k, :k] = s[K]
    system[k, k] = n
    w = weight.detach().to(device)
    b = bias.detach().to(device).double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                               device=device)
    rhs = torch.empty(w.shape[0], k + 1, dtype=torch.float64, device=device)     # (out, k + 1)
    rhs[:, :k] = w.to(G.dtype) @ Gk                                # W G_{:K}, in the Gram's precision
    del Gk
    rhs[:, :k] += b[:, None] * s[K][None, :] + lam * w.index_select(1, K).double()
    rhs[:, k] = w.double() @ s + n * b
    solution = torch.linalg.solve(system, rhs.T).T                                 # (out, k + 1)
    return solution[:, :k], solution[:, k]
