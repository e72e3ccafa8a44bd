"""The importance criteria, one small registered class each: what it needs and its per-member formula.

A member is one slice of one weight matrix belonging to a group (a KV group's rows of q/k/v and
columns of o; an MLP channel's rows of gate/up and column of down). Each criterion turns the
member's weights W (and, where it needs them, the gradient g = dL/dW of the calibration loss and
the float32 Fisher diagonal F = mean_n (dL_n/dW)^2) into an elementwise statistic, which
`importance.reduce_to_groups` sums over each group's slice; `finish` runs once on the summed
(n_members, n_groups) statistics. `importance.member_statistics` runs the passes that `needs` asks
for, and nothing else:

    "weights"      the weights only (no calibration data)
    "gradient"     one accumulated backward pass over the calibration batch
    "fisher"       per-sample backward passes for F (before the gradient pass, if any)
    "activations"  a no-grad forward collecting the statistics of o_proj / down_proj inputs
    "hidden states" a no-grad forward keeping each decoder layer's input and output
    "seed"         nothing but a random generator (one score per group)

`CRITERIA`, the CLI's choices and the page's dropdowns are the registry's names, in order.
"""

from __future__ import annotations

from typing import Callable

import torch

REGISTRY: dict[str, "Criterion"] = {}


def register(cls):
    """Class decorator: adds one instance of `cls` to the registry under `cls.name`."""
    REGISTRY[cls.name] = cls()
    return cls


class Criterion:
    name: str = ""
    needs: frozenset[str] = frozenset()
    formula: str = ""              # per member slice, plain text
    aggregates: bool = True        # False: one score per group, the aggregation does not apply

    def element(self, w: torch.Tensor, g: torch.Tensor | None = None,
                fisher: torch.Tensor | None = None) -> torch.Tensor | Callable:
        """Elementwise statistic of one weight (float32), or a callable(member) -> per-position
        values where the statistic depends on the member's dimension."""
        raise NotImplementedError(f"{self.name} has no elementwise statistic")

    def finish(self, stats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Applied once to the per-family (n_members, n_groups) sums."""
        return stats

    @property
    def calibration_free(self) -> bool:
        return self.needs <= {"weights", "seed"}

    @property
    def layer_level(self) -> bool:
        """Scores whole decoder layers (the layer strategy only)."""
        return "hidden states" in self.needs


@register
class Random(Criterion):
    name, needs, aggregates = "random", frozenset({"seed"}), False
    formula = "uniform(0, 1) per group, seeded"


@register
class L1(Criterion):
    name, needs = "l1", frozenset({"weights"})
    formula = "sum |w|"

    def element(self, w, g=None, fisher=None):
        return w.abs()


@register
class L2(Criterion):
    name, needs = "l2", frozenset({"weights"})
    formula = "sum w^2   (LLM-Pruner's MagnitudeImportance, p=2)"

    def element(self, w, g=None, fisher=None):
        return w * w


@register
class TaylorVector(Criterion):
    name, needs = "taylor-vector", frozenset({"weights", "gradient"})
    formula = "| sum g*w |   (Eq. 3-4, vector-wise: the whole member slice)"

    def element(self, w, g=None, fisher=None):
        return g * w                       # signed: summed over the slice, then |.| in finish

    def finish(self, stats):
        return [s.abs() for s in stats]


@register
class TaylorVectorRows(Criterion):
    name, needs = "taylor-vector-rows", frozenset({"weights", "gradient"})
    formula = "sum over rows of | sum g*w |   (the official code's 'vectorize')"

    def element(self, w, g=None, fisher=None):
        gw = g * w
        return lambda member: gw.abs() if gw.dim() == 1 else gw.sum(1 - member.dim).abs_()


@register
class TaylorElement1(Criterion):
    name, needs = "taylor-element1", frozenset({"weights", "gradient"})
    formula = "sum |g*w|   (Eq. 5, element-wise, first order)"

    def element(self, w, g=None, fisher=None):
        return (g * w).abs_()


@register
class TaylorSquared(Criterion):
    name, needs = "taylor-squared", frozenset({"weights", "gradient"})
    formula = ("sum (g*w)^2   (Molchanov et al. 2019, arXiv 1906.10771: each weight's first-order term "
               "squared, summed over the slice; the second-order term with the Hessian diagonal ~ g^2)")

    def element(self, w, g=None, fisher=None):
        return (g * w).square_()


@register
class TaylorElement2(Criterion):
    name, needs = "taylor-element2", frozenset({"weights", "gradient", "fisher"})
    formula = "sum |g*w - 0.5*F*w^2|   (Eq. 5, Hessian diagonal ~ Fisher: the official param_mix)"

    def element(self, w, g=None, fisher=None):
        return (g * w - 0.5 * fisher * w.square()).abs_()


@register
class TaylorSecond(Criterion):
    name, needs = "taylor-second", frozenset({"weights", "fisher"})
    formula = "sum F*w^2   (the official param_second: the second-order term alone)"

    def element(self, w, g=None, fisher=None):
        return fisher * w.square()


class InputCriterion(Criterion):
    """Scores read off the last member (o_proj / down_proj) and the statistics of its inputs x
    over the calibration tokens: `column` gives one value per input channel, summed over each
    group's channels, then `finish`."""
    needs, aggregates = frozenset({"weights", "activations"}), False
    # FLAP's standardization (allocation="standardized"): the per-channel values, raised to this
    # power per block (FLAP squares its attention metric), standardized over the layer's channels,
    # averaged over each group's channels
    z_power = {"attn": 1, "mlp": 1}

    def column(self, w: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """(in,) per input channel, from W (out, in) float32 and E[x], Var[x] (in,)."""
        raise NotImplementedError

    scores_hidden = False              # True where `hidden` scores residual (embedding) channels

    def hidden(self, mean_squares: list[torch.Tensor]) -> torch.Tensor:
        """(hidden,) per residual channel, from E[x^2] (hidden,) of the residual stream at every point
        a linear reads it (each block's input, the output projection's)."""
        raise NotImplementedError


@register
class Fluctuation(InputCriterion):
    name = "fluctuation"
    z_power = {"attn": 2, "mlp": 1}
    formula = ("FLAP: sum over the group's input channels c of the last weight (o_proj / down_proj) "
               "of Var[x_c] * ||W[:, c]||^2")

    def column(self, w, mean, var):
        return var * w.square().sum(0)


@register
class WandaSp(InputCriterion):
    name = "wanda-sp"
    formula = ("Wanda-sp (as in FLAP's code): sum over the group's input channels c of the last weight "
               "of mean_r |W[r, c]| * sqrt(E[x_c^2])")

    def column(self, w, mean, var):
        return w.abs().mean(0) * (var + mean.square()).sqrt()


@register
class Activation(InputCriterion):
    name = "activation"
    formula = ("Minitron: the group's activation norm, sqrt(sum over its channels c of E[x_c^2]) at the "
               "input of o_proj / down_proj (a head's output, an MLP channel's activation); a hidden "
               "(embedding) channel's: sqrt(sum over the points linears read the residual stream, each "
               "block's normalized input and the final norm's output, of E[x_c^2])")

    def column(self, w, mean, var):
        return var + mean.square()

    scores_hidden = True

    def hidden(self, mean_squares):
        return torch.stack(mean_squares).sum(0)

    def finish(self, stats):
        for s in stats:           # the score row only (row 0 holds the standardized channel mean)
            s[-1] = s[-1].sqrt()
        return stats


@register
class BlockInfluence(Criterion):
    name, needs, aggregates = "block-influence", frozenset({"hidden states"}), False
    formula = ("ShortGPT: 1 - mean over tokens of cos(h_in, h_out) of each decoder layer, spread evenly "
               "over the layer's groups (the layer strategy sums them back); whole layers only")


def criterion(name: str) -> Criterion:
    if name not in REGISTRY:
        raise ValueError(f"unknown criterion {name!r}; use one of {tuple(REGISTRY)}")
    return REGISTRY[name]
