"""The least-squares refit of pruned down_proj layers (pruner/refit.py): the formula against a
direct computation, the damped objective never worse than mean compensation, the layer stream
equal to the model's own forward, and the refit wired into pruning."""

import copy

import pytest
import torch

from pruner.prune import Plan, PruneConfig, apply_plan, prune_model
from pruner.importance import ScoreConfig
from pruner.arch import arch_of
from pruner.models import layers_of
from pruner import refit
from pruner.refit import FitSums, LayerStream, refit_solution, solve_system

from conftest import tiny_model


def down_proj(model, layer: int):
    return layers_of(model)[layer].get_submodule(arch_of(model).down)


def sums(h, weight, bias, kept):
    return FitSums.of(h, weight, bias, list(kept))


def correlated_inputs(n=400, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return base @ torch.randn(4, d, generator=g, dtype=torch.float64) + 0.3 * torch.randn(n, d, generator=g,
                                                                                          dtype=torch.float64) + 0.5


def test_keeping_every_column_gives_back_the_layer():
    h = correlated_inputs()
    w, b = torch.randn(5, 12, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    new_w, new_b = refit_solution(w, sums(h, w, b, range(12)))
    torch.testing.assert_close(new_w, w)
    torch.testing.assert_close(new_b, b)


@pytest.mark.parametrize("block", [256, 3])     # one row block, or several that split k + 1 = 8 unevenly
def test_the_solution_solves_the_damped_problem_and_beats_mean_compensation(block, monkeypatch):
    monkeypatch.setattr(refit, "GRAM_BLOCK", block)
    h = correlated_inputs()
    w, b = torch.randn(5, 12, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    kept, removed = [0, 2, 3, 5, 7, 8, 11], [1, 4, 6, 9, 10]
    n = h.shape[0]
    new_w, new_b = refit_solution(w, sums(h, w, b, kept), damping=0.5)
    target = h @ w.T + b
    lam = 0.5 * (h[:, kept] ** 2).sum(0).mean()

    def objective(wk, bk):
        return ((target - h[:, kept] @ wk.T - bk) ** 2).sum() + lam * ((wk - w[:, kept]) ** 2).sum()

    # the gradient of the damped objective vanishes at the solution
    wk, bk = new_w.clone().requires_grad_(), new_b.clone().requires_grad_()
    objective(wk, bk).backward()
    assert wk.grad.abs().max() < 1e-6 * n and bk.grad.abs().max() < 1e-6 * n
    # FLAP's mean compensation is one point of the same problem (kept weights, a mean bias)
    mean_bias = b + w[:, removed] @ h[:, removed].mean(0)
    assert objective(new_w, new_b) < objective(w[:, kept], mean_bias)


def test_the_sums_are_what_the_full_gram_matrix_gives_over_batches(monkeypatch):
    monkeypatch.setattr(refit, "GRAM_BLOCK", 2)          # row blocks that split the kept columns unevenly
    h = correlated_inputs(n=300, d=10)
    w, b, kept = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, dtype=torch.float64), [1, 3, 4, 8, 9]
    got = FitSums.of(h[:100], w, b, kept)
    got.add(h[100:], w, b)
    G, s, K = h.T @ h, h.sum(0), torch.tensor(kept)
    # the upper triangle is gathered (all the factorization reads; the row blocks' diagonal squares
    # fill some of the lower one too)
    torch.testing.assert_close(got.system[:5, :5].triu(), G[K][:, K].triu())
    torch.testing.assert_close(got.system[:5, 5], s[K])
    assert got.system[5, 5] == 300
    torch.testing.assert_close(got.rhs[:5], (w @ G[:, K] + b[:, None] * s[K][None, :]).T)
    torch.testing.assert_close(got.rhs[5], w @ s + 300 * b)
    assert got.n == 300


def test_token_weights_weigh_each_tokens_squared_error():
    h = correlated_inputs(n=50, d=6)
    w, b, kept = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, dtype=torch.float64), [0, 2, 5]
    t = torch.rand(50, dtype=torch.float64) * 3
    got = FitSums(torch.tensor(kept))
    got.add(h, w, b, token_weights=t)
    hk1 = torch.cat([h[:, kept], torch.ones(50, 1, dtype=torch.float64)], 1)   # (tokens, k + 1)
    torch.testing.assert_close(got.system.triu(), (hk1.T @ (t[:, None] * hk1)).triu())
    torch.testing.assert_close(got.rhs, hk1.T @ (t[:, None] * (h @ w.T + b)))
    assert got.n == pytest.approx(float(t.sum()))


def test_the_refit_never_forms_the_gram_of_every_input_nor_a_second_system(calib):
    # a layer's working set is its kept columns' sums and one (k + 1)-square float64 system,
    # factored in place: no (d_ff, d_ff) matrix and no second system (bench/prune_memory.py)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.seen.append((tuple(t.shape), t.dtype, t.untyped_storage().data_ptr()))
            return out

    model = tiny_model(layers=3)            # hidden 32, d_ff 48
    with Shapes() as shapes:
        apply_plan(model, Plan(mlp_keep={1: list(range(24))}), refit_ids=calib)
    assert not [s for s in shapes.seen if s[0] == (48, 48)]
    systems = {ptr for shape, dtype, ptr in shapes.seen if shape == (25, 25) and dtype == torch.float64}
    assert len(systems) == 1


def test_the_solve_works_in_the_systems_and_right_hand_sides_own_storage(monkeypatch):
    # LAPACK copies a row-major matrix before factoring it, and torch.cholesky_solve copies the
    # factor: either is a second (k + 1)-square float64 system at the refit's peak
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 9, generator=g, dtype=torch.float64)
    system, rhs = x.T @ x + torch.eye(9, dtype=torch.float64), torch.randn(9, 3, generator=g, dtype=torch.float64)
    expected = torch.linalg.solve(system, rhs)
    calls = []
    factor, triangular = torch.linalg.cholesky_ex, torch.linalg.solve_triangular

    def cholesky_ex(a, *args, out=None, **kwargs):
        calls.append(("cholesky", a.stride(0) == 1, out[0].data_ptr() == a.data_ptr() == system.data_ptr()))
        return factor(a, *args, out=out, **kwargs)

    def solve_triangular(a, b, *args, out=None, **kwargs):
        calls.append(("triangular", a.data_ptr() == system.data_ptr(), out.data_ptr() == b.data_ptr() == rhs.data_ptr()))
        return triangular(a, b, *args, out=out, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", cholesky_ex)
    monkeypatch.setattr(torch.linalg, "solve_triangular", solve_triangular)
    monkeypatch.setattr(torch, "cholesky_solve", lambda *a, **k: pytest.fail("cholesky_solve copies the factor"))
    weight, bias = solve_system(system, rhs)
    assert calls == [("cholesky", True, True), ("triangular", True, True), ("triangular", True, True)]
    torch.testing.assert_close(weight, expected[:-1].T)
    torch.testing.assert_close(bias, expected[-1])
    assert weight.data_ptr() == rhs.data_ptr()


def test_the_layer_stream_carries_the_models_own_hidden_states(calib):
    model = tiny_model(layers=3)
    with torch.no_grad():
        states = model(input_ids=calib, output_hidden_states=True).hidden_states
    stream = LayerStream(model, calib, batch_size=3)
    for layer in range(2):              # hidden_states[i] enters layer i (the last one is normed)
        torch.testing.assert_close(torch.cat(stream.hidden), states[layer], atol=1e-5, rtol=1e-5)
        stream.advance()
    torch.testing.assert_close(torch.cat(stream.hidden), states[2], atol=1e-5, rtol=1e-5)


def test_pruning_with_refit_fits_each_layer_on_the_partly_pruned_inputs(calib):
    model = tiny_model(layers=3)
    plan = Plan(mlp_keep={0: list(range(0, 48, 2)), 2: list(range(30))})
    refitted = apply_plan(model, plan, input_stats={}, refit_ids=calib)
    assert down_proj(refitted, 0).weight.shape == (32, 24) and down_proj(refitted, 2).weight.shape == (32, 30)
    assert down_proj(refitted, 1).bias is not None and not down_proj(refitted, 1).bias.any()   # uniform config
    # layer 2 was fitted on what the pruned layers 0-1 feed it, against its dense weights on those inputs
    stream = LayerStream(refitted, calib)
    stream.advance(), stream.advance()
    dense = down_proj(model, 2)
    h = []
    stream.run(2, down_proj(refitted, 2), lambda mod, args: h.append(args[0].reshape(-1, args[0].shape[-1])))
    # (the hook saw the refitted layer's inputs: the kept channels of the same activations)
    copy_ = copy.deepcopy(model)
    apply_plan(copy_, Plan(mlp_keep={0: list(range(0, 48, 2))}), input_stats={}, refit_ids=calib, in_place=True)
    full = LayerStream(copy_, calib)
    full.advance(), full.advance()
    hf = []
    full.run(2, down_proj(copy_, 2), lambda mod, args: hf.append(args[0].reshape(-1, args[0].shape[-1])))
    hf = torch.cat(hf)
    torch.testing.assert_close(torch.cat(h), hf[:, :30], atol=1e-5, rtol=1e-5)
    new_w, new_b = refit_solution(dense.weight.data, sums(hf, dense.weight.data, None, range(30)))
    torch.testing.assert_close(down_proj(refitted, 2).weight.data, new_w.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(down_proj(refitted, 2).bias.data, new_b.float(), atol=1e-4, rtol=1e-4)


def test_refit_needs_compensation_and_is_part_of_prune_model(calib):
    with pytest.raises(ValueError, match="compensate=True"):
        PruneConfig(refit=True).validate(3)
    config, notes = PruneConfig(refit=True).normalized()
    assert not config.refit and "refit" in notes[0]
    model = tiny_model(layers=3)
    config = PruneConfig(amount=0.3, unit="groups", prune_attn=False, compensate=True, refit=True,
                         mlp_layers=(0, 3))
    result = prune_model(model, calib, ScoreConfig("l2"), config)
    plain = prune_model(model, calib, ScoreConfig("l2"), PruneConfig(**{**config.__dict__, "refit": False}))
    assert result.report["params_after"] == plain.report["params_after"]
    assert not torch.equal(down_proj(result.model, 0).weight, down_proj(plain.model, 0).weight)


def test_the_refit_counts_in_the_prune_steps_admitted_peak():
    from pruner import footprint

    model = tiny_model(layers=3)            # hidden 32, d_ff 48
    extra = footprint.prune_peak(model, "l2", 4, 16, True, refit=True) - footprint.prune_peak(model, "l2", 4, 16, True)
    # at most every column kept: float32 sums (k^2 + out k) with the float64 system ((k + 1)^2) and
    # right-hand side, or the system, right-hand side and solution; the stream's hidden states in and out
    k, out = 48, 32
    assert extra == max(4 * (k * k + out * k) + 8 * ((k + 1) ** 2 + (k + 1) * out),
                        8 * ((k + 1) ** 2 + 2 * (k + 1) * out)) + 2 * 4 * 16 * 32 * 4


def test_attention_heads_refit_their_o_proj_on_the_layers_inputs(calib):
    # with KV groups cut in layer 0, o_proj's kept columns and a bias are fitted like down_proj's:
    # on the o_proj inputs of layer 0 (the dense model's there), against the dense o_proj
    model = tiny_model(layers=2)
    o_proj = model.model.layers[0].self_attn.o_proj
    h = []
    handle = o_proj.register_forward_pre_hook(lambda mod, args: h.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=calib)
    handle.remove()
    kept_cols = list(range(16, 32))                     # KV group 1 keeps query heads 2, 3 (8 dims each)
    new_w, new_b = refit_solution(o_proj.weight.data, sums(torch.cat(h), o_proj.weight.data, None, kept_cols))
    refitted = apply_plan(model, Plan(attn_keep={0: [1]}), refit_ids=calib)
    got = refitted.model.layers[0].self_attn.o_proj
    torch.testing.assert_close(got.weight.data, new_w.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.bias.data, new_b.float(), atol=1e-4, rtol=1e-4)
    assert torch.equal(model.model.layers[0].self_attn.o_proj.weight, o_proj.weight)      # original untouched
    assert refitted.config.attention_bias and refitted.model.layers[1].self_attn.o_proj.bias is not None
