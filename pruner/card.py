"""A Hub-style model card (README.md with metadata) for every export, and pushing an export.

The card says what the model is (base model, family, the recipe in LLM-Pruner's terms), what it
costs (parameters and MACs per token before / after), how well it does (perplexity before / after
when it was measured), and how to load it (plain transformers, or with the modeling file for
per-layer widths).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _hub_id(base: str) -> str | None:
    """A base model's hub id for the card's metadata (the built-in default is a hub model too)."""
    if base in ("default", "", None):
        return DEFAULT_BASE
    if Path(base).expanduser().exists() or base.count("/") != 1:
        return None
    return base


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}"


def model_card(record: dict, stats: dict | None = None, per_layer: bool = False) -> str:
    """README.md text: YAML metadata, then what was done, the figures, and how to load it.

    record: config.json's `pruning` (recipe, layer widths); stats: optional figures
    {"params_before", "params_after", "macs_per_token_before", "macs_per_token_after",
     "ppl_before", "ppl_after", "ppl_protocol"}.
    """
    recipe = record.get("recipe") or {}
    base = recipe.get("base_model") or "unknown"
    hub = _hub_id(base)
    prune, score = recipe.get("prune") or {}, recipe.get("score") or {}
    lines = ["---"]
    if hub:
        lines.append(f"base_model: {hub}")
    lines += ["library_name: transformers", "pipeline_tag: text-generation",
              "tags:", "- pruned", "- llm-pruner", "- structural-pruning", "- pruning-studio"]
    if recipe.get("recovery"):
        lines.append("- fine-tuned" if recipe["recovery"].get("full_finetune") else "- lora")
    lines += ["---", "", f"# {Path(str(base)).name or base} pruned with LLM-Pruner's structural pruning", ""]
    lines.append(f"Pruned from `{base}` with [Pruning Studio](https://arxiv.org/abs/2305.11627) "
                 "(LLM-Pruner: coupled structures removed whole, so the matrices really shrink).")
    lines += ["", "## Recipe", ""]
    if "amount" in prune:
        amount = (f"{100 * prune['amount']:.0f}% of the parameters" if prune.get("unit") == "parameters"
                  else f"a group ratio of {prune['amount']}")
    else:       # a recipe written before the amount had a unit
        amount = (f"{100 * prune['target_params']:.0f}% of the parameters" if prune.get("target_params")
                  else f"a group ratio of {prune.get('ratio')}")
    if prune.get("hidden_share"):
        amount += f", {100 * prune['hidden_share']:.0f}% of them from hidden (embedding) channels first"
    if prune.get("refit"):
        amount += ", each pruned down_proj / o_proj refitted by damped least squares"
    lines.append(f"- removed: {amount}, strategy `{prune.get('strategy')}`, scope `{prune.get('scope')}`, "
                 f"attention groups `{prune.get('attn_granularity')}`, attention's share "
                 f"`{prune.get('attn_share')}`, layers attention {prune.get('attn_layers')} / MLP "
                 f"{prune.get('mlp_layers')}, {prune.get('iterative_steps')} step(s)")
    lines.append(f"- importance: `{score.get('criterion')}` aggregated by `{score.get('aggregation')}`"
                 + (f" on {recipe['calibration']['samples']} x {recipe['calibration']['seq_len']} tokens of "
                    f"`{recipe['calibration']['source']}`" if recipe.get("calibration") else "")
                 + (" (text the model sampled itself, seed "
                    f"{recipe['calibration'].get('seed', 0)})" if (recipe.get("calibration") or {}).get("source")
                    == "self" else "")
                 + (f", each window continued by {recipe['calibration']['continuation']} tokens the model sampled"
                    if (recipe.get("calibration") or {}).get("source") not in (None, "self")
                    and recipe["calibration"].get("continuation") else ""))
    lines.append(f"- bias compensation: {bool(prune.get('compensate'))}")
    if recipe.get("recovery"):
        r = recipe["recovery"]
        how = ("full fine-tuning (every weight but the embeddings)" if r.get("full_finetune")
               else f"LoRA r={r.get('r')}")
        lines.append(f"- recovery: {how} for {r.get('steps')} steps at lr {r.get('learning_rate')} "
                     f"on `{r.get('data')}` data, next-token weight {r.get('ce_weight', 1.0)}, "
                     f"distillation weight {r.get('distill_weight')}, merged")
    for note in recipe.get("notes") or []:
        lines.append(f"- note: {note}")
    if stats:
        lines += ["", "## Figures", "", "| | before | after |", "|---|---|---|"]
        for label, key in (("parameters", "params"), ("MACs per token", "macs_per_token"),
                           ("perplexity", "ppl")):
            if stats.get(f"{key}_before") is not None or stats.get(f"{key}_after") is not None:
                lines.append(f"| {label} | {_fmt(stats.get(f'{key}_before'))} | {_fmt(stats.get(f'{key}_after'))} |")
        if stats.get("ppl_protocol"):
            lines += ["", f"Perplexity: {stats['ppl_protocol']}."]
    lines += ["", "## Load it", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              ""]
    if per_layer:
        lines += ["# layers keep different widths: the small modeling_pruned.py in this folder resizes them",
                  'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER_OR_REPO", trust_remote_code=True)']
    else:
        lines += ['model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER_OR_REPO")']
    lines += ['tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER_OR_REPO")', "```", ""]
    return "\n".join(lines)


def push(directory, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload an export folder to the Hub; the token comes from the argument or $HF_TOKEN and is
    never printed."""
    token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise ValueError("no Hugging Face token: set HF_TOKEN (a write token) in the environment")
    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo id must look like owner/name, got {repo_id!r}")
    folder = Path(directory).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not an export folder (no config.json)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as err:  # noqa: BLE001 - network / auth errors become one readable line
        message = str(err).replace(token, "***")
        raise ValueError(f"could not push to {repo_id}: {type(err).__name__}: {message[:200]}") from None
    return f"https://huggingface.co/{repo_id}"


def card_stats(report: dict | None, ppl_before=None, ppl_after=None, protocol: str | None = None) -> dict:
    """The card's figures from a prune report (params / MACs) and optional perplexities."""
    stats = {k: (report or {}).get(k) for k in ("params_before", "params_after", "macs_per_token_before",
                                                 "macs_per_token_after")}
    stats.update(ppl_before=ppl_before, ppl_after=ppl_after, ppl_protocol=protocol)
    return json.loads(json.dumps(stats, default=float))
