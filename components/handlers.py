"""What each dashboard button does: find the visitor's session, ask the shared store for the result
(computing it once for the whole class), return tidy DataFrames and figures plus a note saying
whether it came from the cache. Errors are raised as readable exceptions; app.py shows them in the
tab's status line. No gradio layout here, and no tensor math beyond calling the engine."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from pruner import PruneConfig, ScoreConfig, load_model, make_plan, prune_model, save, score
from pruner.card import card_stats, push
from pruner.export import loader_of
from pruner.activations import input_statistics
from pruner.data import DataUnavailableError, calibration_ids
from pruner.evaluate import evaluate, model_stats, perplexity
from pruner.generate import GenerationSettings, stream
from pruner.groups import describe_layer
from pruner.importance import canonical, score_many
from pruner.models import default_model_file, describe_model
from pruner.prune import needs_calibration
from pruner.recipes import recipe_record, with_recovery
from pruner.recover import LoraRecovery, preset, recovery_examples
from pruner.sensitivity import layer_sensitivity
from pruner.stats import count_params

from . import figures
from .session import Session, SessionRegistry
from .store import Store, content_key, size_of

REPO = Path(__file__).resolve().parent.parent
EXPORT_ROOT = Path(tempfile.gettempdir()) / "pruning-studio-exports"
# with `spaces` (Hugging Face Spaces, ZeroGPU) models live on the CPU between calls and move to the
# GPU only inside a @spaces.GPU call; elsewhere they load where they run (cuda > mps > cpu)
SPACES = importlib.util.find_spec("spaces") is not None
LOAD_DEVICE = "cpu" if SPACES else "auto"
FROM_CACHE = " *(from the class cache: computed once, shared)*"


def data_dir() -> str | None:
    """$PRUNER_DATA_DIR, else the evaluation data beside the repository when present."""
    if os.environ.get("PRUNER_DATA_DIR"):
        return os.environ["PRUNER_DATA_DIR"]
    shared = REPO.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def cache_note(hit: bool) -> str:
    return FROM_CACHE if hit else ""


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
    labels = {"name": "model", "architecture": "architecture", "family": "family", "layers": "decoder layers",
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


def source_key(source: str) -> tuple[str, int]:
    """(identity of a model source's weights, estimated bytes once loaded in float32)."""
    if source == "default":
        path = default_model_file()
        if path is None:
            return "hub:HuggingFaceTB/SmolLM2-135M-Instruct", 0
        stat = path.stat()
        return f"default:{path.name}:{stat.st_size}", 135_000_000 * 4
    folder = Path(source).expanduser()
    if folder.is_dir():
        files = sorted(folder.glob("*.safetensors")) + [folder / "config.json"]
        signature = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
        digest = hashlib.sha256(json.dumps(signature).encode()).hexdigest()[:16]
        weights = sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
        return f"folder:{folder.resolve()}:{digest}", 2 * weights
    return f"hub:{source}@main", 0


def load(registry: SessionRegistry, store: Store, key: str, source: str, progress=None):
    """Give the visitor a new session on `source`; the original is loaded once per server and
    shared. A failed load leaves the visitor's previous session as it was."""
    source = (source or "").strip() or "default"
    identity, estimate = source_key(source)
    if progress:
        progress(0.05, desc="checking the server's memory")

    def read():
        if progress:
            progress(0.2, desc=f"loading {source}" + (" (dequantizing the GGUF file)" if source == "default" else ""))
        model, tokenizer = load_model(source, device=LOAD_DEVICE)
        if progress:
            progress(0.8, desc="reading the coupled structure")
        return model, tokenizer, describe_model(model)

    original, shared = store.original(identity, source, read, estimate)
    session = Session(key=key, source=source, original_key=original.key, info=dict(original.info))
    return registry.put(session), facts_table(session.info), shared


# ----------------------------------------------------------------------------- structure

def structure(store: Store, session: Session, layer: int):
    layer = int(layer)
    n = session.info["layers"]
    if not 0 <= layer < n:
        raise ValueError(f"layer must be between 0 and {n - 1}")
    groups = describe_layer(session.original(store).model, layer)
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

def _calibration_spec(source, samples, seq_len, seed: int = 0) -> dict:
    if not 1 <= int(samples) <= 256 or not 8 <= int(seq_len) <= 1024:
        raise ValueError("calibration needs 1-256 samples of 8-1024 tokens")
    return {"source": source, "samples": int(samples), "seq_len": int(seq_len), "seed": int(seed)}


def calibration(store: Store, session: Session, spec: dict):
    """Calibration token ids, tokenised once per (original, spec)."""
    original = session.original(store)
    ids, _, _ = store.compute("calibration", {"model": session.original_key, **spec},
                              lambda: calibration_ids(original.tokenizer, spec["source"], spec["samples"],
                                                      spec["seq_len"], spec["seed"], data_dir()))
    return ids


def run_score(store: Store, session: Session, criterion, aggregation, source, samples, seq_len,
              kinds=("attn", "mlp")) -> tuple[pd.DataFrame, bool]:
    calib = _calibration_spec(source, samples, seq_len)
    criterion = canonical(criterion)
    config = ScoreConfig(criterion, aggregation, kinds=tuple(kinds))
    config.validate()
    spec = {"model": session.original_key, "criterion": criterion, "aggregation": aggregation,
            "kinds": list(kinds), "calibration": calib}
    original = session.original(store)

    def compute():
        ids = calibration(store, session, calib)
        with accelerated(original.model):
            return score(original.model, ids, config)

    scores, hit, key = store.compute("scores", spec, compute)
    session.remember(key, "scores", spec, compute)
    session.scores, session.calibration = scores, calibration(store, session, calib)
    session.score_settings = {"criterion": criterion, "aggregation": aggregation, "calibration": source,
                              "samples": int(samples), "seq_len": int(seq_len), "key": key}
    return scores, hit


def heatmaps(session: Session, scale="linear", removed=None):
    if session.scores is None:
        return figures.importance_heatmap(pd.DataFrame(columns=["kind"]), "attn"), \
            figures.importance_heatmap(pd.DataFrame(columns=["kind"]), "mlp")
    kinds = set(session.scores.kind)
    attn_kind = "qhead" if "qhead" in kinds and "attn" not in kinds else "attn"
    return (figures.importance_heatmap(session.scores, attn_kind, scale, removed),
            figures.importance_heatmap(session.scores, "mlp", scale, removed))


def compare_scores(store: Store, session: Session, crit_a, agg_a, crit_b, agg_b, source, samples, seq_len,
                   kind="mlp", scale="rank"):
    calib = _calibration_spec(source, samples, seq_len)
    original = session.original(store)
    crit_a, crit_b = canonical(crit_a), canonical(crit_b)

    def compute():
        ids = calibration(store, session, calib)
        with accelerated(original.model):
            return score_many(original.model, ids, sorted({crit_a, crit_b}), sorted({agg_a, agg_b}))

    spec = {"model": session.original_key, "criteria": sorted({crit_a, crit_b}),
            "aggregations": sorted({agg_a, agg_b}), "calibration": calib}
    both, hit, _ = store.compute("score_many", spec, compute)
    frames = dict(iter(both.groupby(["criterion", "aggregation"])))
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
            figures.rank_correlation_figure(corr), table, hit)


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


def _score_kinds(config: PruneConfig) -> tuple[str, ...]:
    return {"channel": ("hidden",), "layer": ("attn", "mlp")}.get(
        config.strategy, ("qhead" if config.attn_granularity == "query-heads" else "attn", "mlp"))


def _scores_for(store: Store, session: Session, config: PruneConfig, criterion: str, aggregation: str):
    """Scores of the kinds this plan needs (re-scored if the heatmap shows other kinds)."""
    kinds = _score_kinds(config)
    have = set(session.scores.kind) if session.scores is not None else set()
    if not set(kinds) <= have or session.score_settings.get("criterion") != canonical(criterion) \
            or session.score_settings.get("aggregation") != aggregation:
        s = session.score_settings
        run_score(store, session, criterion, aggregation, s.get("calibration", "builtin"), s.get("samples", 10),
                  s.get("seq_len", 64), kinds=kinds)
    return session.scores


def preview(store: Store, session: Session, config: PruneConfig, criterion, aggregation, scale="linear"):
    scores = _scores_for(store, session, config, criterion, aggregation)
    config.validate(session.info["layers"])
    original = session.original(store).model
    plan = make_plan(original, scores, config)
    if config.allocation == "sensitivity":          # measured on the uniform plan, as prune_model does
        stats = input_statistics(original, session.calibration) if config.compensate else None
        sensitivity = layer_sensitivity(original, session.calibration, plan, stats)
        plan = make_plan(original, scores, config, sensitivity=sensitivity)
    removed = plan.removed_groups(scores)
    total = count_params(original)["params"]
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


def measured(store: Store, session: Session, model_key: str, model) -> dict:
    """`measure` of one model, once per model content."""
    tokenizer = session.original(store).tokenizer
    return store.compute("measure", {"model": model_key}, lambda: measure(model, tokenizer))[0]


def comparison_table(before: dict, after: dict, label_after: str = "pruned") -> pd.DataFrame:
    rows = []
    for key in before:
        b, a = before[key], after[key]
        change = "" if b in (None, 0) or a is None else f"{100 * (a / b - 1):+.1f}%"
        fmt = (lambda v: "n/a" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"))
        rows.append({"metric": key, "original": fmt(b), label_after: fmt(a), "change": change})
    return pd.DataFrame(rows)


def run_prune(store: Store, session: Session, config: PruneConfig, criterion, aggregation, scale="linear",
              progress=None, notes: list[str] | None = None):
    criterion = canonical(criterion)
    scores = _scores_for(store, session, config, criterion, aggregation)
    score_config = ScoreConfig(criterion, aggregation)
    calibrated = needs_calibration(score_config, config)
    s = session.score_settings
    calib = {"source": s.get("calibration"), "samples": s.get("samples"), "seq_len": s.get("seq_len"),
             "seed": 0} if calibrated else None
    spec = {"model": session.original_key, "criterion": criterion, "aggregation": aggregation,
            "calibration": calib, "prune": asdict(config)}
    original = session.original(store)
    ids = session.calibration if calibrated else None

    def report(step, total, message):
        if progress:
            progress((step + 0.5) / (total + 1) * 0.7, desc=message)

    def compute():
        store.reserve(size_of(original.model))            # the copy pruning makes
        with accelerated(original.model):
            result = prune_model(original.model, ids, score_config, config, report)
        pruned = result.model.to(next(original.model.parameters()).device)  # on ZeroGPU: back to the CPU
        result.model = None            # held once, under "model" (and counted once by the store)
        return {"model": pruned, "result": result}

    value, hit, key = store.compute("pruned", spec, compute)
    session.remember(key, "pruned", spec, compute)
    result = value["result"]
    if progress:
        progress(0.75, desc="measuring before / after (parameters, MACs, memory, tokens/s, perplexity)")
    with accelerated(original.model, value["model"]):
        before = measured(store, session, session.original_key, original.model)
        after = measured(store, session, key, value["model"])
    session.prune_key, session.recovery, session.recovery_key, session.merged_key = key, None, None, None
    session.recipe = recipe_record(score_config, config, calib, session.source, result.group_ratios,
                                   notes=notes)
    removed = result.plans[0].removed_groups(scores) if len(result.plans) == 1 else None
    text = (f"Removed {100 * result.report['ratio_params_removed']:.1f}% of the parameters "
            f"({result.report['params_before']:,} -> {result.report['params_after']:,}); "
            f"MACs per token {result.report['macs_per_token_before']:,.0f} -> "
            f"{result.report['macs_per_token_after']:,.0f}. The original model is unchanged."
            + cache_note(hit) + "".join(f"\n\nNote: {n}." for n in notes or []))
    return (comparison_table(before, after),
            figures.widths_figure(result.widths_before, result.widths_after, result.sensitivity),
            *heatmaps(session, scale, removed), text)


def magnitude_contrast(store: Store, session: Session, share: float):
    """Unstructured magnitude pruning at the same share: zeros, not smaller matrices."""
    from torch.nn.utils import prune as torch_prune

    share = float(share)
    if not 0 < share < 0.95:
        raise ValueError("the share must be between 0 and 0.95")
    original = session.original(store)

    def compute():
        store.reserve(size_of(original.model))
        sparse = copy.deepcopy(original.model)
        linears = [m for n, m in sparse.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
        for m in linears:
            torch_prune.l1_unstructured(m, "weight", amount=share)
            torch_prune.remove(m, "weight")
        with accelerated(sparse):
            return measure(sparse, original.tokenizer)

    after, hit, _ = store.compute("contrast", {"model": session.original_key, "share": share}, compute)
    with accelerated(original.model):
        before = measured(store, session, session.original_key, original.model)
    table = comparison_table(before, after, f"{100 * share:.0f}% magnitude-sparse")
    text = ("Unstructured L1 pruning zeroes weights inside the same matrices: the parameter count, "
            "weight memory, MACs and tokens/s stay (almost) the same; only the non-zero count drops. "
            "Structural pruning removes whole heads and channels, so the model really shrinks." + cache_note(hit))
    return table, text


# ----------------------------------------------------------------------------- recover

def _pruned_model(store: Store, session: Session):
    if session.prune_key is None:
        raise ValueError("prune the model first (Prune tab)")
    return session.value(store, session.prune_key)["model"]


def start_recovery(store: Store, session: Session, preset_name, steps, lr, distill, data_source, progress=None):
    """A cached finished recovery of the same pruned model and settings (returned as `hit`), or a
    new LoraRecovery for this visitor to train."""
    pruned = _pruned_model(store, session)
    overrides = {"max_steps": int(steps), "learning_rate": float(lr), "distill_weight": float(distill)}
    settings = preset(preset_name, **overrides)
    settings.validate()
    key = content_key("recovery", {"pruned": session.prune_key, "settings": asdict(settings), "data": data_source})
    session.merged_key = None
    finished = store.lookup(key)
    if finished is not None:
        session.recovery, session.recovery_key, session.recovery_data = None, key, data_source
        return finished, True, key
    original = session.original(store)
    if progress:
        progress(0.05, desc=f"preparing '{data_source}' data"
                 + (" (the original model answers the built-in prompts)" if data_source == "self" else ""))

    def examples():
        with accelerated(original.model):
            return recovery_examples(data_source, original.tokenizer, settings.seq_len, original.model,
                                     data_dir(), limit=2000)

    data, _, _ = store.compute("examples", {"model": session.original_key, "data": data_source,
                                            "seq_len": settings.seq_len}, examples)
    if progress:
        progress(0.5, desc="setting up LoRA on a copy of the pruned model")
    store.reserve(size_of(pruned))
    with accelerated(original.model, pruned):
        recovery = LoraRecovery(pruned, original.tokenizer, data, settings,
                                teacher=original.model if settings.distill_weight > 0 else None)
    recovery.cache_key = key
    session.recovery, session.recovery_key, session.recovery_data = recovery, None, data_source
    return recovery, False, key


def finish_recovery(store: Store, session: Session, recovery) -> None:
    """A recovery that ran all its steps is shared with the class; a stopped one stays this visitor's."""
    recovery.teacher = None     # the shared original is not part of the result
    if recovery.step >= recovery.settings.max_steps:
        store.put(recovery.cache_key, "recovery", recovery)
        session.recovery, session.recovery_key = None, recovery.cache_key


def current_recovery(store: Store, session: Session):
    if session.recovery is not None:
        return session.recovery
    if session.recovery_key:
        return session.value(store, session.recovery_key)
    return None


def merge(store: Store, session: Session):
    recovery = current_recovery(store, session)
    if recovery is None or not recovery.history:
        raise ValueError("run recovery first")
    original = session.original(store)
    if session.recovery_key:
        merged, hit, key = store.compute("merged", {"recovery": session.recovery_key}, recovery.merge)
    else:   # this visitor's own (stopped early) recovery
        key = f"merged:{session.key}:{recovery.step}"
        merged, hit = recovery.merge(), False
        store.put(key, "merged", merged)
    session.merged_key = key
    pruned = _pruned_model(store, session)      # its quick perplexity was measured when it was pruned
    ppl_before = measured(store, session, session.prune_key, pruned)["WikiText-2 ppl (quick)"]
    ppl_after = _quick_ppl(merged, original.tokenizer)
    if ppl_before is None:
        return "Merged the LoRA weights into the pruned model (pruned + LoRA)." + cache_note(hit)
    return (f"Merged after {recovery.step} steps. Quick WikiText-2 perplexity (first 16 windows): pruned "
            f"{ppl_before:.2f} -> pruned + LoRA {ppl_after:.2f}." + cache_note(hit))


# ----------------------------------------------------------------------------- compare

def compare_stream(store: Store, session: Session, prompt: str, settings: GenerationSettings):
    """Yield (texts dict, rates dict, cached names) while the models generate one after another;
    a generation already made with the same model, prompt and settings is served from the cache."""
    models = session.models(store)
    keys = session.model_keys()
    tokenizer = session.original(store).tokenizer
    texts = {name: "" for name in ("original", "pruned", "pruned + LoRA")}
    rates, cached = {}, []
    for name, model in models.items():
        key = content_key("generation", {"model": keys[name], "prompt": prompt, "settings": asdict(settings)})
        done = store.lookup(key)
        if done is not None:
            texts[name], rates[name] = done["text"], done["tokens_per_s"]
            cached.append(name)
            yield texts, rates, cached
            continue
        last = None
        with accelerated(model):
            for last in stream(model, tokenizer, prompt, settings):
                texts[name] = last["text"]
                yield texts, rates, cached
        rates[name] = last["tokens_per_s"]
        store.put(key, "generation", {"text": last["text"], "tokens_per_s": last["tokens_per_s"]}, miss=True)
        yield texts, rates, cached
    for name in texts:
        if name not in models:
            texts[name] = "(not available yet: prune" + (" and recover)" if "LoRA" in name else ")")
    yield texts, rates, cached


# ----------------------------------------------------------------------------- evaluate

def run_evaluation(store: Store, session: Session, which: list[str], corpora: list[str], tasks: list[str],
                   windows: int, limit: int, progress=None) -> tuple[pd.DataFrame, int]:
    models, keys = session.models(store), session.model_keys()
    chosen = [w for w in which if w in models]
    if not chosen:
        raise ValueError("none of the chosen models exist yet (prune / recover first)")
    if not corpora and not tasks:
        raise ValueError("choose at least one perplexity corpus or task")
    tokenizer = session.original(store).tokenizer
    rows, hits = [], 0
    for i, name in enumerate(chosen):
        if progress:
            progress(i / len(chosen), desc=f"evaluating {name} ({', '.join(corpora + tasks)})")

        def compute(name=name):
            with accelerated(models[name]):
                res = evaluate(models[name], tokenizer, corpora, tasks, max_windows=int(windows),
                               limit=int(limit), data_dir_path=data_dir(), progress=False)
            row = {"params": count_params(models[name])["params"]}
            row.update({f"{c} ppl": v for c, v in res["ppl"].items()})
            row.update(res["acc"])
            if res.get("acc_mean") is not None and len(res["acc"]) > 1:
                row["average"] = res["acc_mean"]
            return row

        spec = {"model": keys[name], "corpora": sorted(corpora), "tasks": sorted(tasks),
                "windows": int(windows), "limit": int(limit)}
        row, hit, _ = store.compute("evaluation", spec, compute)
        hits += hit
        rows.append({"model": name, **row})
    session.evaluations = [r for r in session.evaluations if r["model"] not in chosen] + rows
    return pd.DataFrame(session.evaluations), hits


# ----------------------------------------------------------------------------- export

def export(store: Store, session: Session, which: str, progress=None) -> tuple[str, str, str | None, str, bool]:
    models, keys = session.models(store), session.model_keys()
    if which not in models or which == "original":
        raise ValueError("prune (and optionally recover + merge) before exporting")
    recipe = dict(session.recipe)
    recovery = current_recovery(store, session) if which != "pruned" else None
    if recovery is not None:
        recipe = with_recovery(recipe, recovery.settings, recovery.step, session.recovery_data)
    tokenizer = session.original(store).tokenizer

    def compute():
        folder = EXPORT_ROOT / hashlib.sha256(f"{keys[which]}:{time.time()}".encode()).hexdigest()[:16]
        name = "pruned" if which == "pruned" else "pruned-lora"
        if progress:
            progress(0.2, desc="writing safetensors, config and tokenizer")
        if progress:
            progress(0.1, desc="measuring both models for the model card")
        before = measured(store, session, session.original_key, models["original"])
        after = measured(store, session, keys[which], models[which])
        stats = card_stats({"params_before": before["parameters"], "params_after": after["parameters"],
                            "macs_per_token_before": before["MACs / token"],
                            "macs_per_token_after": after["MACs / token"]},
                           before["WikiText-2 ppl (quick)"], after["WikiText-2 ppl (quick)"],
                           "WikiText-2, first 16 windows of 128 tokens (the dashboard's quick figure)")
        save(models[which], folder / name, tokenizer, recipe=json.loads(json.dumps(recipe, default=str)),
             stats=stats)
        if progress:
            progress(0.6, desc="zipping the folder")
        archive = zip_folder(folder, name)
        recipe_path = folder / "recipe.json"
        recipe_path.write_text(json.dumps(recipe, indent=2, default=str) + "\n")
        adapter = None
        if recovery is not None:
            if progress:
                progress(0.85, desc="saving the LoRA adapter")
            recovery.save_adapter(folder / "adapter")
            adapter = zip_folder(folder, "adapter", "lora-adapter")
        return {"archive": archive, "recipe": str(recipe_path), "adapter": adapter,
                "loader": loader_of(folder / name)}

    spec = {"model": keys[which], "recipe": recipe}
    files, hit, _ = store.compute("export", spec, compute)
    if not Path(files["archive"]).is_file():        # the temporary folder was cleaned: write again
        files = compute()
    return files["archive"], files["recipe"], files["adapter"], files["loader"], hit


def export_gguf(store: Store, session: Session, which: str, precision: str = "f16",
                progress=None) -> tuple[str, str, bool]:
    """One GGUF file of a session model for llama.cpp / ollama / LM Studio, and a sentence on it."""
    from pruner.gguf_export import describe, write_gguf

    models, keys = session.models(store), session.model_keys()
    if which not in models or which == "original":
        raise ValueError("prune (and optionally recover + merge) before exporting")
    tokenizer = session.original(store).tokenizer
    base_model = session.recipe.get("base_model") or getattr(models["original"].config, "_name_or_path", "")

    def compute():
        folder = EXPORT_ROOT / hashlib.sha256(f"{keys[which]}:gguf:{time.time()}".encode()).hexdigest()[:16]
        if progress:
            progress(0.2, desc=f"writing {precision} GGUF")
        name = "pruned" if which == "pruned" else "pruned-lora"
        summary = write_gguf(models[which], tokenizer, folder / f"{name}-{precision}.gguf", precision,
                             base_model=base_model)
        return {"path": str(summary.path), "sentence": describe(summary)}

    files, hit, _ = store.compute("gguf", {"model": keys[which], "precision": precision}, compute)
    if not Path(files["path"]).is_file():
        files = compute()
    return files["path"], files["sentence"], hit


def zip_folder(root: Path, name: str, archive_name: str | None = None) -> str:
    """root/name -> root/archive_name.zip, stored uncompressed: safetensors weights barely
    compress, and deflating hundreds of MB took most of an export's time on a CPU."""
    import zipfile

    archive = root / f"{archive_name or name}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        for path in sorted((root / name).rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(root))
    return str(archive)


def push_to_hub(store: Store, session: Session, which: str, repo_id: str, token: str) -> str:
    if not token:
        raise ValueError("a Hugging Face write token is needed to push")
    if which not in session.models(store) or which == "original":
        raise ValueError("prune before pushing")
    archive, *_ = export(store, session, which)
    return f"Pushed to {push(Path(archive).with_suffix(''), repo_id, token)}"


