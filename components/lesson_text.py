"""The words on the page: the paper's equations, what each tab shows, and what to notice.

Kept apart from the layout so a teacher can read (and edit) the lesson in one place. Equation
numbers are those of LLM-Pruner (Ma, Fang, Wang 2023, arXiv 2305.11627).
"""

from pruner.recover import PRESETS

_QUICK = PRESETS["quick"]

LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]

DEPENDENCY = r"""
**Coupled structures (Eq. 1-2).** Neurons $N_i \to N_j$ are coupled when one can't go without the other:
$$N_j \in \mathrm{Out}(N_i) \,\wedge\, \mathrm{Deg}^-(N_j) = 1 \;\Rightarrow\; N_j \text{ depends on } N_i \qquad (1)$$
$$N_i \in \mathrm{In}(N_j) \,\wedge\, \mathrm{Deg}^+(N_i) = 1 \;\Rightarrow\; N_i \text{ depends on } N_j \qquad (2)$$
Following these rules from any neuron collects one **group**; it is scored and removed as a unit.
"""

CRITERIA = r"""
**Importance of a group's member $W_i$ (a slice of one weight matrix) on calibration data $\mathcal{D}$.**

*Vector-wise* (Eq. 3; `taylor-vector`, and `taylor-vector-rows` as the official code computes it, per row):
$$I_{W_i} = |\Delta \mathcal{L}(\mathcal{D})| = \left| \frac{\partial \mathcal{L}^\top(\mathcal{D})}{\partial W_i} W_i - \tfrac{1}{2} W_i^\top H W_i + \mathcal{O}(\|W_i\|^3) \right| \approx \left| \frac{\partial \mathcal{L}^\top}{\partial W_i} W_i \right| \qquad (3)$$

*Element-wise* (Eq. 4), summed over the elements $k$ of the slice. First order (`taylor-element1`):
$$I_{W_i^k} = \left| \frac{\partial \mathcal{L}(\mathcal{D})}{\partial W_i^k} W_i^k - \tfrac{1}{2} \sum_j H_{kj} W_i^k W_i^j + \mathcal{O}(\|W_i^k\|^3) \right| \approx \left| \frac{\partial \mathcal{L}}{\partial W_i^k} W_i^k \right| \qquad (4)$$
second order (`taylor-element2`, the official `param_mix`) keeps the diagonal of $H$, approximated by the
Fisher information (Eq. 5), accumulated here in float32 (the official fp16 sum underflows):
$$H_{kk} \approx \sum_{n=1}^{N} \left( \frac{\partial \mathcal{L}(\mathcal{D}_n)}{\partial W_i^k} \right)^2 \qquad (5)
\qquad\Rightarrow\qquad I_{W_i^k} \approx \left| g_k W_i^k - \tfrac{1}{2} H_{kk} (W_i^k)^2 \right|$$

Squared (`taylor-squared`, Molchanov et al. 2019; the default recipe's, last-only): $\sum_k \left( \frac{\partial \mathcal{L}}{\partial W_i^k} W_i^k \right)^2$,
the same first-order terms squared, so a slice's few large terms count more than many small ones.

Baselines: `l1` $\sum_k |W_i^k|$, `l2` $\sum_k (W_i^k)^2$, `random`; `taylor-second` is the official
$\sum_k H_{kk} (W_i^k)^2$, and `fluctuation` is FLAP's $\mathrm{Var}[x_k]\,\|W_{:,k}\|^2$.
"""

AGGREGATIONS = r"""
**Group importance** from its members' (§3.2): `sum` $I(G) = \sum_i I_{W_i}$ · `prod`
$\prod_i I_{W_i}$ (computed as $\sum_i \log I_{W_i}$, same ranking, no underflow) · `max` $\max_i I_{W_i}$ ·
`last` (the paper's *last-only*) $I_{W_l}$, the member that writes the group's output (o_proj columns,
down_proj columns) · `first` $I_{W_1}$ (q/k/v rows, gate/up rows) · `mean` $\frac{1}{M}\sum_i I_{W_i}$.
"""

NOTICE = {
    "model": ("**What to notice.** The built-in model has 9 query heads sharing 3 KV heads (grouped-query "
              "attention) and 1,536 MLP channels per layer. *Ask:* which of these numbers will pruning change, "
              "and which must stay the same for the residual stream to still add up?"),
    "structure": ("**What to notice.** A KV group drags 3 query heads with it, so removing one removes a third "
                  "of the layer's attention; a query head or an MLP channel is a much finer unit. A hidden "
                  "channel touches every layer. *Ask:* why does the paper score whole groups rather than "
                  "single weights?"),
    "importance": ("**What to notice.** Compare the sorted curves layer by layer: where one layer's scores sit "
                   "far above another's, a single global ranking would strip the weaker layer bare, which is why "
                   "the default ratio is per layer (and why the first 3 and last 2 layers, which hurt most when "
                   "pruned, are skipped). *Ask:* sum and last-only rank the same channels differently; which "
                   "member of a group does last-only trust, and why might that be enough?"),
    "prune": ("**What to notice.** Structured pruning shrinks the matrices, so parameters, MACs and weight "
              "memory fall together; the unstructured contrast zeroes as many weights but nothing else changes. "
              "*Ask:* why doesn't perplexity rise in proportion to the parameters removed?"),
    "recover": ("**What to notice.** Each point is one batch of different passages, so the loss jumps from step "
                "to step; read the trend (the dotted line: mean of the last 5 steps) and the KL to the original, "
                "which measures how far the pruned model's predictions are from the dense one's; the `quick` "
                f"preset's loss is that KL plus {_QUICK.ce_weight:g} x the next-token loss on the books, so its "
                "level is mostly the next-token part while the KL shows what was recovered. LoRA trains "
                "small low-rank matrices beside each projection (about 8% of the pruned model's parameters at "
                f"the quick preset's rank {_QUICK.r}), not the weights. "
                "*Ask:* what does the distillation term teach that plain next-token loss does not?"),
    "compare": ("**What to notice.** Greedy decoding from the same prompt: where the pruned model's text first "
                "departs from the original's, and whether LoRA brings it back. *Ask:* is a fluent text evidence "
                "that nothing was lost?"),
    "evaluate": ("**What to notice.** With 50 items a task the standard error is about 7 points: differences "
                 "inside the error bars are not evidence. Perplexity moves far more than accuracy. *Ask:* how "
                 "many items would you need to tell a 2-point drop from noise?"),
    "export": ("**What to notice.** The default recipe keeps different widths per layer, which transformers' "
               "own Llama class cannot describe in one config: the export says which loader it needs. *Ask:* "
               "what would you give up by rounding every layer to one width?"),
}


def notice(tab: str, info: dict | None = None) -> str:
    """A tab's "what to notice" box with the loaded model's own numbers (the built-in default's
    text where no model is loaded yet)."""
    if not info or tab not in ("model", "structure"):
        return NOTICE[tab]
    heads, kv, width = info["heads"], info["kv_heads"], info["intermediate_size"]
    per_group = heads // kv if kv else heads
    attention = (f"{heads} query heads sharing {kv} KV heads (grouped-query attention)" if kv < heads
                 else f"{heads} attention heads, each with its own keys and values")
    if tab == "model":
        return (f"**What to notice.** This model has {info['layers']} layers, each with {attention} and "
                f"{width:,} MLP channels; its embeddings hold "
                f"{100 * (1 - info['params_non_embedding'] / info['params']):.0f}% of its parameters. *Ask:* "
                "which of these numbers will pruning change, and which must stay the same for the residual "
                "stream to still add up?")
    unit = (f"A KV group drags {per_group} query heads with it, so removing one removes "
            f"{'a third' if kv == 3 else f'1/{kv}'} of the layer's attention"
            if kv < heads else "A KV group here is a single head with its own keys and values")
    return (f"**What to notice.** {unit}; a query head or an MLP channel (of {width:,}) is a much finer "
            "unit. A hidden channel touches every layer. *Ask:* why does the paper score whole groups rather "
            "than single weights?")
