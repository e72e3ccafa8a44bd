"""Damped least-squares refit of a pruned down_proj (or o_proj) on the pruned model's own inputs.

Removing MLP channels K' of a layer leaves down_proj's kept columns K to carry what the removed ones
did (removing attention heads leaves o_proj's; the same fit, on o_proj's inputs). With h (tokens, d_ff) the down_proj inputs the *partly pruned* model feeds this layer on
calibration text (earlier layers already cut and refitted), and the target y = h W^T + b the dense
down_proj's output on those same inputs, the kept columns and a bias solve

    min_{W', b'}  || y - h_K W'^T - b' ||^2  +  lam || W' - W_K ||^2,     lam = damping * mean diag(h_K^T h_K)

(damped toward the kept weights, not toward zero: a huge damping gives W' = W_K with the bias that
best replaces the removed channels, FLAP's mean compensation). Normal equations on [h_K, 1]:

    [W', b'] ([G_KK, s_K; s_K^T, n] + lam diag(1..1, 0)) = [W G_{:K} + b s_K^T + lam W_K,  W s + n b]

with G = h^T h, s = sum h and n the token count. Only what the equations read is gathered
(`FitSums`), straight into the float64 storage the solve uses: the upper triangle of the Gram
matrix of [h_K, 1] (G_KK, s_K, n) and its cross products with the dense output, [h_K, 1]^T y, each
batch's products formed in float32 a block of rows at a time; never G over every input, never a
second copy of the (k + 1)-square system. Damping is added in place, the system factored by
Cholesky in its own storage and solved in the right-hand side's (`solve_system`).

`LayerStream` carries the calibration batches through the decoder one layer at a time (each layer
runs once on the pruned copy, plus once more where it is refitted, and only the first layer runs
while the stream records the layers' arguments), so the whole refit costs about two forward
passes, not one per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    families give sliding-window layers their own) are recorded once from a forward of the model
    in which every layer but the first passes its input through: the model makes them before its
    layers run, so no layer's work is needed to see them (the first runs, to learn whether this
    transformers version's layers return a tensor or a tuple)."""

    @reusing_freed_memory()
    def __init__(self, model, input_ids: torch.Tensor, batch_size: int = 8):
        self.model, self.layers = model, layers_of(model)
        device = next(model.parameters()).device
        self.hidden: list[torch.Tensor] = []                 # per batch: (b, seq, d) entering layer `at`
        self.kwargs: list[list[dict]] = []                   # per batch, per layer
        self.at = 0
        for batch in torch.split(input_ids, batch_size):
            self.kwargs.append(self._record(batch.to(device)))

    def _record(self, batch: torch.Tensor) -> list[dict]:
        """Each layer's keyword arguments on `batch`, from a forward in which every layer but the
        first passes its input through; keeps the hidden states entering the first layer."""
        calls: list[dict] = []
        as_tuple: list[bool] = []

        def recording(real):
            def forward(*args, **kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                if not calls:
                    self.hidden.append(hidden.detach())
                calls.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
                if not as_tuple:                          # the first layer runs
                    out = real(*args, **kwargs)
                    as_tuple.append(isinstance(out, tuple))
                    return out
                return (hidden,) if as_tuple[0] else hidden   # the others pass their input through
            return forward

        patched = [(layer, layer.__dict__.get("forward")) for layer in self.layers]
        for layer, _ in patched:
            layer.forward = recording(layer.forward)
        try:
            with torch.no_grad():
                self.model.model(input_ids=batch, use_cache=False)
        finally:
            for layer, own in patched:
                if own is None:
                    del layer.forward
                else:
                    layer.forward = own
        return calls

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


# rows of the Gram matrix formed per product: a (block, k + 1) float32 temporary per batch
GRAM_BLOCK = 256


@dataclass
class FitSums:
    """What the refit needs of a linear layer's calibration inputs h (tokens, in) and of the dense
    layer's outputs on them y = h W^T + b (tokens, out), for kept input columns K (k of them), in
    the float64 storage the solve uses: never the (in, in) Gram matrix of every input, so a layer's
    working set is its (k + 1)-square system and (k + 1, out) right-hand side (bench/prune_memory.py)."""

    kept: torch.Tensor                  # (k,) the kept input columns K
    system: torch.Tensor | None = None  # (k + 1, k + 1) float64: upper triangle of [h_K, 1]^T [h_K, 1]
    rhs: torch.Tensor | None = None     # (k + 1, out) float64: [h_K, 1]^T y = [W G_{:K} + b s_K^T; W s + n b]
    n: float = 0.0                      # tokens (their summed weights); refit_system takes system and rhs

    @classmethod
    def of(cls, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kept) -> FitSums:
        """The sums over one batch of inputs h (tokens, in); `add` accumulates more."""
        sums = cls(torch.as_tensor(kept, device=h.device))
        sums.add(h, weight, bias)
        return sums

    def add(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            token_weights: torch.Tensor | None = None) -> None:
        """Add one batch of inputs h (tokens, in); `token_weights` (tokens,) weighs each token's
        squared error (bench/weighted_refit.py), else all weigh 1."""
        dtype = torch.promote_types(h.dtype, torch.float32)         # float32 at least
        h32 = h.to(dtype)                                            # (tokens, in)
        y = h32 @ weight.to(dtype).T                                 # (tokens, out): the dense output
        if bias is not None:
            y += bias.to(dtype)
        k = len(self.kept)
        hk1 = torch.ones(h.shape[0], k + 1, dtype=dtype, device=h.device)   # (tokens, k + 1): [h_K, 1]
        hk1[:, :k] = h32.index_select(1, self.kept)
        del h32
        left = hk1 if token_weights is None else hk1 * token_weights.to(hk1)[:, None]
        if self.system is None:
            fp64 = _fp64(h.device)
            self.system = torch.zeros(k + 1, k + 1, dtype=torch.float64, device=fp64)
            self.rhs = torch.zeros(k + 1, y.shape[1], dtype=torch.float64, device=fp64)
        for start in range(0, k + 1, GRAM_BLOCK):                   # the upper triangle, a row block at a time
            rows = left[:, start: start + GRAM_BLOCK].T                              # (block, tokens)
            self.system[start: start + GRAM_BLOCK, start:] += (rows @ hk1[:, start:]).to(self.system.device)
            self.rhs[start: start + GRAM_BLOCK] += (rows @ y).to(self.rhs.device)
        self.n += h.shape[0] if token_weights is None else float(token_weights.sum())


def kept_input_sums(stream: LayerStream, layer: int, module, kept) -> FitSums:
    """`FitSums` of `module`'s inputs at `layer` over the stream, for kept input columns `kept`."""
    sums = FitSums(torch.as_tensor(kept, device=module.weight.device))

    def hook(mod, args):
        h = args[0].detach().reshape(-1, args[0].shape[-1])          # (tokens, in)
        sums.add(h, mod.weight.detach(), mod.bias.detach() if mod.bias is not None else None)

    stream.run(layer, module, hook)
    return sums


def refit_system(weight: torch.Tensor, sums: FitSums,
                 damping: float = REFIT_DAMPING) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal equations of the module docstring in float64: the (k + 1)-square system (its
    upper triangle, which is all the factorization reads) and the (k + 1, out) right-hand side, for
    the kept columns `sums` was gathered for: `sums`' own storage with the damping added in place
    (`sums` gives them up)."""
    system, rhs, sums.system, sums.rhs = sums.system, sums.rhs, None, None
    k = system.shape[0] - 1
    lam = float(damping * system[:k, :k].diagonal().mean())
    system[:k, :k].diagonal().add_(lam)
    kept = sums.kept.to(weight.device)
    for start in range(0, k, GRAM_BLOCK):                  # lam W_K^T, a row block at a time: no (k, out) copies
        block = weight.detach().index_select(1, kept[start: start + GRAM_BLOCK]).T      # (block, out)
        rhs[start: min(start + GRAM_BLOCK, k)].add_(block.to(rhs.device, torch.float64), alpha=lam)
    return system, rhs


def solve_system(system: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, k) weight and (out,) bias from `refit_system`'s equations, both views of `rhs`, which
    the solution overwrites. The system is positive definite (the Gram matrix of [h_K, 1] plus lam
    on the first k diagonal entries), so it is factored by Cholesky in its own storage and solved by
    two triangular solves in the right-hand side's: no copy of either (bench/prune_memory.py).
    LAPACK works on column-major matrices, so the factorization is given the system's transpose,
    the same symmetric matrix in column-major order (a row-major one is copied first, and
    `torch.cholesky_solve` copies the factor: each a second (k + 1)-square system)."""
    lower = system.mT                                              # column-major view, L after the factorization
    info = torch.empty((), dtype=torch.int32, device=system.device)
    torch.linalg.cholesky_ex(lower, out=(lower, info))
    if int(info):                                  # not positive definite: rounding on a degenerate input
        raise ValueError(f"the refit's normal equations are singular (minor {int(info)}); prune without the refit")
    torch.linalg.solve_triangular(lower, rhs, upper=False, out=rhs)       # L z = rhs
    torch.linalg.solve_triangular(lower.mT, rhs, upper=True, out=rhs)     # L^T x = z     (k + 1, out)
    return rhs[:-1].T, rhs[-1]


def refit_solution(weight: torch.Tensor, sums: FitSums,
                   damping: float = REFIT_DAMPING) -> tuple[torch.Tensor, torch.Tensor]:
    """The refitted (out, k) weight and (out,) bias of a linear layer keeping the input columns
    `sums` was gathered for with this weight (`kept_input_sums`, `FitSums.of`; see the module
    docstring), in float64."""
    return solve_system(*refit_system(weight, sums, damping))
