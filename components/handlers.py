"""What each dashboard button does: read the visitor's session, call the engine, return tidy
DataFrames and figures. Errors are raised as readable exceptions; app.py turns them into
gr.Error messages. No gradio layout here, and no tensor math beyond calling the engine."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from pruner import PruneConfig, ScoreConfig, load_model, make_plan, prune_model, save, score
from pruner.prune import needs_calibration
from pruner.recipes import recipe_record
from pruner.activations import input_statistics
from pruner.data import DataUnavailableError, calibration_ids
from pruner.evaluate import evaluate, model_stats, perplexity
from pruner.generate import GenerationSettings, stream
from pruner.groups import describe_layer
from pruner.importance import score_many
from pruner.models import describe_model
from pruner.recover import LoraRecovery, preset, recovery_examples
from pruner.sensitivity import layer_sensitivity
from pruner.stats import count_params

from . import figures
from .session import Session, SessionRegistry

REPO = Path(__file__).resolve().parent.parent
EXPORT_ROOT = Path(tempfile.gettempdir()) / "pruning-studio-exports"


def data_dir() -> str | None:
    """$PRUNER_DATA_DIR, else the evaluation data beside the repository when present."""
    if os.environ.get("PRUNER_DATA_DIR"):
        return os.environ["PRUNER_DATA_DIR"]
    shared = REPO.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


@contextlib.contextmanager
def accelerated(*models):
    """On ZeroGPU the models live on the CPU between calls: move them to the GPU for the work
    and back afterwards. Elsewhere (CPU, or a model already on its GPU) nothing moves."""
    moved = []
    if torch.cuda.is_available():
        for m in models:
            if m is not None and next(m.parameters()).device.type == "cpu":
                m.to("cuda")
                moved.append(m)
    try:
        yield
    finally:
        for m in moved:
            m.to("cpu")
        if moved:
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- model

def facts_table(info: dict) -> pd.DataFrame:
    labels = {"name": "model", "architecture": "architecture", "layers": "decoder layers",
              "heads": "query heads", "kv_heads": "KV heads (grouped-query attention)",
              "head_dim": "head dim", "hidden_size": "hidden size", "intermediate_size": "MLP width",
              "vocab_size": "vocabulary", "params": "parameters (total)",
              "params_non_embedding": "parameters (non-embedding)", "tied_embeddings": "tied embeddings",
              "device": "device", "dtype": "dtype"}
    rows = []
    for key, label in labels.items():
        value = info.get(key)
        rows.append({"property": label, "value": f"{value:,}" if isinstance(value, int)
                     and not isinstance(value, bool) else str(value)})
    return pd.DataFrame(rows)


def load(registry: SessionRegistry, key: str, source: str, progress=None) -> tuple[Session, pd.DataFrame]:
    """Load into a new session; the visitor's previous session survives a failed load."""
    source = (source or "").strip() or "default"
    registry.check_capacity(key)
    if progress:
        progress(0.1, desc=f"loading {source}")
    model, tokenizer = load_model(source)
    for p in model.parameters():
        p.requires_grad_(False)
    session = Session(source=source, original=model, tokenizer=tokenizer, info=describe_model(model))
    return registry.put(key, session), facts_table(session.info)


# ----------------------------------------------------------------------------- structure

def structure(session: Session, layer: int):
    layer = int(layer)
    n = session.info["layers"]
    if not 0 <= layer < n:
        raise ValueError(f"layer must be between 0 and {n - 1}")
    groups = describe_layer(session.original, layer)
    attn = groups[groups.kind == "attn"]
    summary = (attn.groupby("group").agg(query_heads=("indices", lambda s: s.iloc[0]),
                                         params=("n_params", "sum")).reset_index())
    per_mlp = int(groups[(groups.kind == "mlp") & (groups.group == 0)].n_params.sum())
    table = pd.concat([
        pd.DataFrame({"group": [f"KV group {g}" for g in summary.group],
                      "members": [", ".join(f"{r.role} {r.dim} {r.indices}" for r in
                                            attn[attn.group == g].itertuples()) for g in summary.group],
                      "parameters": summary.params}),
        pd.DataFrame({"group": [f"MLP channel c (x{session.info['intermediate_size']})"],
                      "members": ["gate row c, up row c, down column c"], "parameters": [per_mlp]}),
    ], ignore_index=True)
    return figures.structure_figure(groups), table


# ----------------------------------------------------------------------------- importance

def _calibration(session: Session, source: str, samples: int, seq_len: int, seed: int = 0):
    return calibration_ids(session.tokenizer, source, int(samples), int(seq_len), seed, data_dir())


def run_score(session: Session, criterion, aggregation, source, samples, seq_len, scale="linear",
              kinds=("attn", "mlp")):
    if not 1 <= int(samples) <= 256 or not 8 <= int(seq_len) <= 1024:
        raise ValueError("calibration needs 1-256 samples of 8-1024 tokens")
    ids = _calibration(session, source, samples, seq_len)
    with accelerated(session.original):
        scores = score(session.original, ids, ScoreConfig(criterion, aggregation, kinds=tuple(kinds)))
    session.scores, session.calibration = scores, ids
    session.score_settings = {"criterion": criterion, "aggregation": aggregation, "calibration": source,
                              "samples": int(samples), "seq_len": int(seq_len)}
    return scores


def heatmaps(session: Session, scale="linear", removed=None):
    if session.scores is None:
        return figures.importance_heatmap(pd.DataFrame(columns=["kind"]), "attn"), \
            figures.importance_heatmap(pd.DataFrame(columns=["kind"]), "mlp")
    kinds = set(session.scores.kind)
    attn_kind = "qhead" if "qhead" in kinds and "attn" not in kinds else "attn"
    return (figures.importance_heatmap(session.scores, attn_kind, scale, removed),
            figures.importance_heatmap(session.scores, "mlp", scale, removed))


def compare_scores(session: Session, crit_a, agg_a, crit_b, agg_b, source, samples, seq_len,
                   kind="mlp", scale="rank"):
    ids = _calibration(session, source, samples, seq_len)
    with accelerated(session.original):
        frames = {}
        for crit in {crit_a, crit_b}:
            frames.update({(crit, agg): df for agg, df in
                           score_many(session.original, ids, [crit], list({agg_a, agg_b})).groupby("aggregation")})
    a, b = frames[(crit_a, agg_a)], frames[(crit_b, agg_b)]
    rows, disagreements = [], []
    for (k, layer), sub_a in a.groupby(["kind", "layer"]):
        sub_b = b[(b.kind == k) & (b.layer == layer)].set_index("group").score
        ranks_a = sub_a.set_index("group").score.rank(pct=True)
        ranks_b = sub_b.rank(pct=True).reindex(ranks_a.index)
        rows.append({"kind": k, "layer": int(layer), "spearman": float(ranks_a.corr(ranks_b))})
        gap = (ranks_a - ranks_b).abs().sort_values(ascending=False).head(3)
        for g, d in gap.items():
            disagreements.append({"kind": k, "layer": int(layer), "group": int(g),
                                  f"rank A ({crit_a}/{agg_a})": round(float(ranks_a[g]), 3),
                                  f"rank B ({crit_b}/{agg_b})": round(float(ranks_b[g]), 3),
                                  "gap": round(float(d), 3)})
    corr = pd.DataFrame(rows)
    table = pd.DataFrame(disagreements).sort_values("gap", ascending=False).head(30)
    title_a, title_b = f"A: {crit_a} / {agg_a}", f"B: {crit_b} / {agg_b}"
    return (figures.importance_heatmap(a, kind, scale, title=title_a),
            figures.importance_heatmap(b, kind, scale, title=title_b),
            figures.rank_correlation_figure(corr), table)


# ----------------------------------------------------------------------------- prune

def prune_config(mode, amount, scope, strategy, granularity, attn_share, compensate, attn_start,
                 attn_end, mlp_start, mlp_end, steps, allocation="uniform", recompute=False,
                 model=None) -> tuple[PruneConfig, list[str]]:
    """The PruneConfig the Prune tab's controls describe, normalised by the engine for `model`
    (settings that cannot apply are turned off), and the notes saying what was turned off."""
    amount = float(amount)
    if not 0 < amount < 0.95:
        raise ValueError(f"the pruning amount must be between 0 and 0.95, got {amount}")
    share = None if attn_share is None or float(attn_share) < 0 else float(attn_share)
    by_params = mode == "share of parameters"
    config = PruneConfig(ratio=0.0 if by_params else amount, target_params=amount if by_params else None,
                         scope=scope, strategy=strategy, attn_granularity=granularity, attn_share=share,
                         compensate=bool(compensate), recompute_means=bool(recompute),
                         allocation=allocation, attn_layers=(int(attn_start), int(attn_end)),
                         mlp_layers=(int(mlp_start), int(mlp_end)), iterative_steps=int(steps))
    return config.normalized(model)


def _scores_for(session: Session, config: PruneConfig, criterion: str, aggregation: str):
    """Scores of the kinds this plan needs (re-scored if the heatmap shows other kinds)."""
    kinds = {"channel": ("hidden",), "layer": ("attn", "mlp")}.get(
        config.strategy, ("qhead" if config.attn_granularity == "query-heads" else "attn", "mlp"))
    have = set(session.scores.kind) if session.scores is not None else set()
    if not set(kinds) <= have or session.score_settings.get("criterion") != criterion \
            or session.score_settings.get("aggregation") != aggregation:
        source = session.score_settings.get("calibration", "builtin")
        run_score(session, criterion, aggregation, source, session.score_settings.get("samples", 10),
                  session.score_settings.get("seq_len", 64), kinds=kinds)
    return session.scores


def preview(session: Session, config: PruneConfig, criterion, aggregation, scale="linear"):
    scores = _scores_for(session, config, criterion, aggregation)
    config.validate(session.info["layers"])
    plan = make_plan(session.original, scores, config)
    if config.allocation == "sensitivity":          # measured on the uniform plan, as prune_model does
        stats = input_statistics(session.original, session.calibration) if config.compensate else None
        sensitivity = layer_sensitivity(session.original, session.calibration, plan, stats)
        plan = make_plan(session.original, scores, config, sensitivity=sensitivity)
    removed = plan.removed_groups(scores)
    total = count_params(session.original)["params"]
    if plan.drop_layers:
        text = f"Will remove decoder layers {plan.drop_layers}."
    else:
        counts = removed.groupby("kind").size().to_dict()
        share = removed.n_params.sum() / total
        text = ("Will remove " + ", ".join(f"{n} {figures.KIND_TITLES.get(k, k).split(':')[-1].strip()}"
                                          for k, n in counts.items())
                + f" = {100 * share:.1f}% of all parameters (marked with x).")
    return heatmaps(session, scale, removed) + (text,)


def _quick_ppl(model, tokenizer, windows: int = 16) -> float | None:
    try:
        return perplexity(model, tokenizer, "wikitext2", max_windows=windows, data_dir_path=data_dir(),
                          progress=False)["ppl"]
    except DataUnavailableError:
        return None


def measure(model, tokenizer, ppl_windows: int = 16) -> dict:
    """The engine's model_stats (a quicker throughput run), non-zeros and a quick perplexity,
    labelled for the before / after table."""
    stats = model_stats(model, tokenizer, seq_len=128, new_tokens=16, repeats=2)
    nonzero = sum(int((p != 0).sum()) for p in {id(p): p for p in model.parameters()}.values())
    return {"parameters": stats["params"], "non-zero parameters": nonzero,
            "MACs / token": stats["macs_per_token"], "weight memory (MiB)": stats["weight_mib"],
            "forward peak memory (MiB)": stats["forward_peak_mib"], "tokens / s": stats["tokens_per_s"],
            "WikiText-2 ppl (quick)": _quick_ppl(model, tokenizer, ppl_windows)}


def comparison_table(before: dict, after: dict, label_after: str = "pruned") -> pd.DataFrame:
    rows = []
    for key in before:
        b, a = before[key], after[key]
        change = "" if b in (None, 0) or a is None else f"{100 * (a / b - 1):+.1f}%"
        fmt = (lambda v: "n/a" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"))
        rows.append({"metric": key, "original": fmt(b), label_after: fmt(a), "change": change})
    return pd.DataFrame(rows)


def run_prune(session: Session, config: PruneConfig, criterion, aggregation, scale="linear", progress=None,
              notes: list[str] | None = None):
    scores = _scores_for(session, config, criterion, aggregation)
    score_config = ScoreConfig(criterion, aggregation)
    calibrated = needs_calibration(score_config, config)
    ids = session.calibration if calibrated else None

    def report(step, total, message):
        if progress:
            progress((step + 0.5) / (total + 1), desc=message)

    with accelerated(session.original):
        result = prune_model(session.original, ids, score_config, config, report)
        pruned = result.model
        if progress:
            progress(0.9, desc="measuring before / after")
        before = session.info.get("measure") or measure(session.original, session.tokenizer)
        session.info["measure"] = before
        after = measure(pruned, session.tokenizer)
    pruned.to(next(session.original.parameters()).device)   # on ZeroGPU: back to the CPU with the rest
    session.pruned, session.prune_result, session.recovery, session.merged = pruned, result, None, None
    calibration = {"source": session.score_settings.get("calibration"),
                   "samples": session.score_settings.get("samples"),
                   "seq_len": session.score_settings.get("seq_len"), "seed": 0} if calibrated else None
    session.recipe = recipe_record(score_config, config, calibration, session.source, result.group_ratios,
                                   notes=notes)
    removed = result.plans[0].removed_groups(scores) if len(result.plans) == 1 else None
    text = (f"Removed {100 * result.report['ratio_params_removed']:.1f}% of the parameters "
            f"({result.report['params_before']:,} -> {result.report['params_after']:,}); "
            f"MACs per token {result.report['macs_per_token_before']:,.0f} -> "
            f"{result.report['macs_per_token_after']:,.0f}. The original model is unchanged."
            + "".join(f"\n\nNote: {n}." for n in notes or []))
    return (comparison_table(before, after),
            figures.widths_figure(result.widths_before, result.widths_after, result.sensitivity),
            *heatmaps(session, scale, removed), text)


def magnitude_contrast(session: Session, share: float):
    """The seed's unstructured magnitude pruning at the same share: zeros, not smaller matrices."""
    from torch.nn.utils import prune as torch_prune

    share = float(share)
    if not 0 < share < 0.95:
        raise ValueError("the share must be between 0 and 0.95")
    sparse = copy.deepcopy(session.original)
    linears = [m for n, m in sparse.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    for m in linears:
        torch_prune.l1_unstructured(m, "weight", amount=share)
        torch_prune.remove(m, "weight")
    with accelerated(sparse, session.original):
        before = session.info.get("measure") or measure(session.original, session.tokenizer)
        session.info["measure"] = before
        after = measure(sparse, session.tokenizer)
    del sparse
    table = comparison_table(before, after, f"{100 * share:.0f}% magnitude-sparse")
    text = ("Unstructured L1 pruning zeroes weights inside the same matrices: the parameter count, "
            "weight memory, MACs and tokens/s stay (almost) the same; only the non-zero count drops. "
            "Structural pruning removes whole heads and channels, so the model really shrinks.")
    return table, text


# ----------------------------------------------------------------------------- recover

def start_recovery(session: Session, preset_name, steps, lr, distill, data_source, progress=None):
    if session.pruned is None:
        raise ValueError("prune the model first (Prune tab)")
    overrides = {"max_steps": int(steps), "learning_rate": float(lr), "distill_weight": float(distill)}
    settings = preset(preset_name, **overrides)
    if progress:
        progress(0.05, desc=f"preparing '{data_source}' data")
    with accelerated(session.original, session.pruned):
        examples = recovery_examples(data_source, session.tokenizer, settings.seq_len, session.original,
                                     data_dir(), limit=2000)
        session.recovery = LoraRecovery(session.pruned, session.tokenizer, examples, settings,
                                        teacher=session.original if settings.distill_weight > 0 else None)
    session.merged = None
    return session.recovery, len(examples)


def merge(session: Session):
    if session.recovery is None or not session.recovery.history:
        raise ValueError("run recovery first")
    session.merged = session.recovery.merge()
    ppl_before = _quick_ppl(session.pruned, session.tokenizer)
    ppl_after = _quick_ppl(session.merged, session.tokenizer)
    if ppl_before is None:
        return "Merged the LoRA weights into the pruned model (pruned + LoRA)."
    return (f"Merged after {session.recovery.step} steps. Quick WikiText-2 perplexity: pruned "
            f"{ppl_before:.2f} -> pruned + LoRA {ppl_after:.2f}.")


# ----------------------------------------------------------------------------- compare

def compare_stream(session: Session, prompt: str, settings: GenerationSettings):
    """Yield (texts dict, stats dict) while the models generate one after another."""
    models = session.models()
    texts = {name: "" for name in ("original", "pruned", "pruned + LoRA")}
    rates = {}
    for name, model in models.items():
        with accelerated(model):
            for item in stream(model, session.tokenizer, prompt, settings):
                texts[name] = item["text"]
                if item["done"]:
                    rates[name] = item["tokens_per_s"]
                yield texts, rates
    for name in texts:
        if name not in models:
            texts[name] = "(not available yet: prune" + (" and recover)" if "LoRA" in name else ")")
    yield texts, rates


# ----------------------------------------------------------------------------- evaluate

def run_evaluation(session: Session, which: list[str], corpora: list[str], tasks: list[str],
                   windows: int, limit: int, progress=None) -> pd.DataFrame:
    models = session.models()
    chosen = [w for w in which if w in models]
    if not chosen:
        raise ValueError("none of the chosen models exist yet (prune / recover first)")
    if not corpora and not tasks:
        raise ValueError("choose at least one perplexity corpus or task")
    rows = []
    for i, name in enumerate(chosen):
        if progress:
            progress(i / len(chosen), desc=f"evaluating {name}")
        with accelerated(models[name]):
            res = evaluate(models[name], session.tokenizer, corpora, tasks, max_windows=int(windows),
                           limit=int(limit), data_dir_path=data_dir(), progress=False)
        row = {"model": name, "params": count_params(models[name])["params"]}
        row.update({f"{c} ppl": v for c, v in res["ppl"].items()})
        row.update(res["acc"])
        if res.get("acc_mean") is not None and len(res["acc"]) > 1:
            row["average"] = res["acc_mean"]
        rows.append(row)
    session.evaluations = [r for r in session.evaluations if r["model"] not in chosen] + rows
    return pd.DataFrame(session.evaluations)


# ----------------------------------------------------------------------------- export

def export(session: Session, which: str) -> tuple[str, str, str | None]:
    models = session.models()
    if which not in models or which == "original":
        raise ValueError("prune (and optionally recover + merge) before exporting")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = EXPORT_ROOT / f"{stamp}-{abs(hash(id(session))) % 10**6}"
    name = "pruned" if which == "pruned" else "pruned-lora"
    model_dir = folder / name
    recipe = dict(session.recipe)
    if which != "pruned" and session.recovery is not None:
        from dataclasses import asdict

        recipe["recovery"] = asdict(session.recovery.settings) | {"steps": session.recovery.step}
    save(models[which], model_dir, session.tokenizer, recipe=json.loads(json.dumps(recipe, default=str)))
    archive = shutil.make_archive(str(folder / name), "zip", root_dir=folder, base_dir=name)
    recipe_path = folder / "recipe.json"
    recipe_path.write_text(json.dumps(recipe, indent=2, default=str) + "\n")
    adapter = None
    if session.recovery is not None:
        session.recovery.save_adapter(folder / "adapter")
        adapter = shutil.make_archive(str(folder / "lora-adapter"), "zip", root_dir=folder, base_dir="adapter")
    return archive, str(recipe_path), adapter


def push_to_hub(session: Session, which: str, repo_id: str, token: str) -> str:
    if not repo_id or "/" not in repo_id:
        raise ValueError("give a repository id like your-name/smollm2-pruned")
    if not token:
        raise ValueError("a Hugging Face write token is needed to push")
    models = session.models()
    if which not in models or which == "original":
        raise ValueError("prune before pushing")
    archive, _, _ = export(session, which)
    folder = Path(archive).with_suffix("")
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as err:
        raise ValueError(f"could not push to {repo_id}: {type(err).__name__}: {str(err)[:200]}") from err
    return f"Pushed to https://huggingface.co/{repo_id}"
