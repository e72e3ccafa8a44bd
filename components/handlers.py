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
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pruner import PruneConfig, ScoreConfig, load_model, make_plan, prune_model, save, score
from pruner.card import card_stats, push
from pruner.export import loader_of
from pruner.arch import arch_of
from pruner.data import (SELF_SOURCE, CalibrationSpec, DataUnavailableError,
                         self_text_is_kept, text_origin)
from pruner.evaluate import NORMED_TASKS, evaluate, model_stats
from pruner.generate import GenerationSettings, prompt_ids, stream
from pruner.groups import describe_layer, family, group_slices
from pruner.importance import canonical, score_many
from pruner.models import default_model_file, describe_model
from pruner.protocol import (QUICK_PPL_SEQ_LEN, QUICK_PPL_TEXT, QUICK_PPL_WINDOWS, SPEED_RUNS, SPEED_TEXT,
                             SPEED_TOKENS, Speed, decode_speeds, is_quick_perplexity, quick_perplexity)
from pruner.prune import (MAX_SHARE, default_layer_range, needs_calibration, prunable_share, score_kinds,
                          unreachable)
from pruner.recipes import RECIPES, recipe_record, with_recovery
from pruner.recover import LoraRecovery, LoraSettings, example_limit, preset, recovery_examples
from pruner.stats import count_params

from pruner import footprint

from . import figures
from .policy import check_source, max_params
from .session import Session, SessionRegistry
from .exports import ExportDisk
from .store import Store, content_key

REPO = Path(__file__).resolve().parent.parent
# with `spaces` (Hugging Face Spaces, ZeroGPU) models live on the CPU between calls and move to the
# GPU only inside a @spaces.GPU call; elsewhere they load where they run (cuda > mps > cpu)
SPACES = importlib.util.find_spec("spaces") is not None
LOAD_DEVICE = "cpu" if SPACES else "auto"
FROM_CACHE = " *(from the class cache: computed once, shared)*"


def data_dir() -> str | None:
    """The data folder the engine uses ($PRUNER_DATA_DIR, else ../shared/data where it exists); the
    engine then tries the hub and the slices shipped in the package."""
    from pruner.data import data_dir as engine_data_dir

    folder = engine_data_dir()
    return str(folder) if folder is not None else None


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
    check_source(source)
    identity, estimate = source_key(source)
    if progress:
        progress(0.05, desc="checking the server's memory")

    def read():
        with store.admit("loading the model", footprint.load_peak(estimate, source == "default"), progress):
            if progress:
                progress(0.2, desc=f"loading {source}" + (" (dequantizing the GGUF file)" if source == "default" else ""))
            # a model and its pruned copy must fit together: hub ids larger than half the budget are refused
            model, tokenizer = load_model(source, device=LOAD_DEVICE, max_params=max_params(),
                                          max_bytes=store.budget // 2)
        if progress:
            progress(0.8, desc="reading the coupled structure")
        return model, tokenizer, describe_model(model)

    current = registry.find(key)
    original, shared = store.original(identity, source, read, estimate)
    if current is not None and current.original_key == original.key:     # the same model: keep the work
        return current, facts_table(current.info), True
    session = Session(key=key, source=source, original_key=original.key, info=dict(original.info),
                      steps={"load": {"source": source}})
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


GRANULARITIES = ("KV group", "query head", "MLP channel", "hidden channel")


def graph_members(slices: list[tuple[str, str, str]]) -> dict[str, str]:
    """The dependency graph's nodes (figures.GRAPH_NODES) -> the slices there, from
    groups.group_slices: fused projections light every node they hold (qkv_proj: q, k and v),
    norms the node before the block they feed (or after down_proj for post-norms)."""
    nodes: dict[str, list[str]] = {}
    seen_o = seen_down = seen_attn = False
    separate_up = any(role == "up" for role, _, _ in slices)      # the MLP family's fused halves
    for role, module, where in slices:
        short = module.rsplit(".", 1)[-1]
        if role == "norm":
            if seen_down:
                targets = ["down"]
            elif seen_o:
                targets = ["mlp_norm"]
            else:
                targets = ["attn"] if seen_attn else ["attn_norm"]
        elif role == "qkv":
            targets = ["q", "k", "v"]
        elif role == "gate" and short.startswith("gate_up") and not separate_up:
            targets = ["gate", "up"]
        else:
            targets = [role]
        seen_attn |= role in ("q", "k", "v", "qkv")
        seen_o |= role == "o"
        seen_down |= role == "down"
        for node in targets:
            nodes.setdefault(node, []).append(f"{short} {where}")
    return {node: "; ".join(texts) for node, texts in nodes.items()}


def dependency_graph(store: Store, session: Session, layer: int, granularity: str, group: int):
    """The members of one group of `granularity` in `layer`, as (figure, sentence): which rows
    or columns of which projections go together, and why (in / out degree, LLM-Pruner Eq. 1-2)."""
    model = session.original(store).model
    arch = arch_of(model)
    layer, group = int(layer), int(group)
    n_q, n_kv, hd = arch.attention_shape(model.model.layers[layer])
    width, hidden = arch.mlp_width(model.model.layers[layer]), session.info["hidden_size"]
    limit = {"KV group": n_kv, "query head": n_q, "MLP channel": width, "hidden channel": hidden}[granularity]
    if not 0 <= group < limit:
        raise ValueError(f"layer {layer} has {limit} {granularity}s: choose 0 to {limit - 1}")
    kind = {"KV group": "attn", "query head": "qhead", "MLP channel": "mlp", "hidden channel": "hidden"}[granularity]
    members = graph_members(group_slices(family(model, kind, layer), group, layer=layer))
    if granularity == "KV group":
        rep = n_q // n_kv
        members["attn"] = f"KV head {group}, query heads {group * rep}-{(group + 1) * rep - 1}"
        why = (f"KV head {group}'s k/v rows are read by {rep} query heads (out-degree {rep}): removing it "
               "removes them, their q rows and the o_proj columns that read only them (in-degree 1).")
    elif granularity == "query head":
        members["attn"] = f"query head {group}"
        why = (f"Query head {group}: its q rows and the o_proj columns reading it go together; its KV head "
               f"is shared with {n_q // n_kv - 1} other query heads and stays (the Prune tab's default "
               "attention granularity removes the same number of query heads per KV group).")
    elif granularity == "MLP channel":
        members["act"] = f"channel {group}"
        why = (f"MLP channel {group}: {members['gate']} and {members['up']} each write it, {members['down']} "
               f"reads it and nothing else does, so the three slices are one group of {3 * hidden:,} weights.")
    else:
        members.update({n: f"channel {group}" for n in ("resid_in", "resid_out", "add1", "add2")})
        why = (f"Hidden channel {group} is one coordinate of the residual stream that every layer reads and "
               f"writes: removing it removes these slices in every layer, plus column {group} of the "
               "embedding, the final norm's weight and lm_head's column (the 'channel' strategy).")
    title = f"Layer {layer}: one {granularity} (red) and the slices coupled to it"
    return figures.dependency_graph_figure(members, title), why


# ----------------------------------------------------------------------------- importance

def calibration(store: Store, session: Session, spec: CalibrationSpec, progress=None):
    """Calibration token ids, made once per (original, spec) for the whole class: text tokenised,
    or (source "self") written by the original itself; call it where the model is on its device."""
    original = session.original(store)

    def make():
        if progress and spec.source == SELF_SOURCE:
            kept = self_text_is_kept(original.model, original.tokenizer, spec.samples, spec.seq_len, spec.seed)
            progress(0.05, desc="reading the calibration text the model wrote before" if kept else
                     f"the model writes its own calibration text ({2 * spec.samples} short documents)")
        elif progress and (new := spec.window_tokens(original.model) - spec.seq_len):
            progress(0.05, desc=f"the model continues each of the {spec.samples} calibration windows by "
                     f"{new} tokens")
        return spec.ids(original.tokenizer, data_dir(), original.model)

    ids, _, _ = store.compute("calibration", {"model": session.original_key, **spec.record()}, make)
    return ids


def low_memory_scoring(store: Store, model, criterion: str, samples: int, seq_len: int) -> bool:
    """Keep activations (fast) only when that fits the server's budget now; else recompute layers
    and chunk the Fisher buffers (frugal). The same scores either way."""
    return not store.fits_now(footprint.score_peak(model, criterion, samples, seq_len, low_memory=False))


def run_score(store: Store, session: Session, config: ScoreConfig, calib: CalibrationSpec,
              progress=None) -> tuple[pd.DataFrame, bool]:
    """The scores of the session's original (from the class cache when anyone computed them);
    `progress(fraction, desc=...)` follows the engine's forward+backward passes."""
    config = replace(config, criterion=canonical(config.criterion), kinds=tuple(config.kinds))
    config.validate()
    criterion, aggregation, kinds = config.criterion, config.aggregation, config.kinds
    spec = {"model": session.original_key, "criterion": criterion, "aggregation": aggregation,
            "kinds": list(kinds), "calibration": calib.record()}
    original = session.original(store)

    def compute():
        n, length = calib.samples, calib.window_tokens(original.model)     # continued windows: longer
        config.low_memory = low_memory_scoring(store, original.model, criterion, n, length)
        peak = max(footprint.score_peak(original.model, criterion, n, length, config.low_memory),
                   footprint.calibration_peak(original.model, calib.source, n, calib.seq_len, calib.continuation))
        with store.admit("scoring", peak, progress), accelerated(original.model):
            ids = calibration(store, session, calib, progress)
            return score(original.model, ids, config, progress=(
                lambda fraction, phase: progress(0.1 + 0.85 * fraction, desc=f"scoring with {criterion}: {phase}"))
                if progress else None)

    scores, hit, key = store.compute("scores", spec, compute)
    session.remember(key, "scores", spec, compute)
    session.scores, session.calibration = scores, calibration(store, session, calib)
    session.score_settings = {"criterion": criterion, "aggregation": aggregation, "spec": calib, "key": key}
    session.steps["score"] = {"criterion": criterion, "aggregation": aggregation, "source": calib.source,
                              "samples": calib.samples, "seq_len": calib.seq_len,
                              "continuation": calib.continuation, "kinds": list(kinds)}
    return scores, hit


def heatmaps(session: Session, scale="linear", removed=None):
    if session.scores is None:
        return figures.importance_heatmap(pd.DataFrame(columns=["kind"]), "attn"), \
            figures.importance_heatmap(pd.DataFrame(columns=["kind"]), "mlp")
    kinds = set(session.scores.kind)
    attn_kind = "qhead" if "qhead" in kinds and "attn" not in kinds else "attn"
    return (figures.importance_heatmap(session.scores, attn_kind, scale, removed),
            figures.importance_heatmap(session.scores, "mlp", scale, removed))


def layer_views(session: Session, kind: str, layer: int):
    """One layer up close (scores per group, sorted with the cut) and the score histograms."""
    if session.scores is None:
        return figures.layer_importance_figure(pd.DataFrame(columns=["kind", "layer"]), kind, layer), \
            figures.importance_histogram(None)
    kinds = set(session.scores.kind)
    if kind == "attn" and "attn" not in kinds and "qhead" in kinds:
        kind = "qhead"
    return (figures.layer_importance_figure(session.scores, kind, layer, session.removed),
            figures.importance_histogram(session.scores, session.removed))


MIN_GROUPS_FOR_CORRELATION = 8
DISAGREE_COLUMNS = ["kind", "layer", "group", "rank A", "rank B", "gap"]


def compare_scores(store: Store, session: Session, a: ScoreConfig, b: ScoreConfig, calib: CalibrationSpec,
                   kind="mlp", scale="rank"):
    """Two criteria / aggregations (A, B) on the same calibration tokens: both heatmaps, their rank
    correlation per layer and the groups they disagree on most."""
    original = session.original(store)
    crit_a, crit_b = canonical(a.criterion), canonical(b.criterion)
    agg_a, agg_b = a.aggregation, b.aggregation

    def compute():
        length = calib.window_tokens(original.model)
        peak = max([footprint.score_peak(original.model, c, calib.samples, length) for c in (crit_a, crit_b)]
                   + [footprint.calibration_peak(original.model, calib.source, calib.samples, calib.seq_len,
                                                 calib.continuation)])
        with store.admit("scoring both", peak), accelerated(original.model):
            ids = calibration(store, session, calib)
            return score_many(original.model, ids, sorted({crit_a, crit_b}), sorted({agg_a, agg_b}))

    spec = {"model": session.original_key, "criteria": sorted({crit_a, crit_b}),
            "aggregations": sorted({agg_a, agg_b}), "calibration": calib.record()}
    both, hit, _ = store.compute("score_many", spec, compute)
    frames = dict(iter(both.groupby(["criterion", "aggregation"])))
    a, b = frames[(crit_a, agg_a)], frames[(crit_b, agg_b)]
    rows, disagreements = [], []
    sparse = []
    for (k, layer), sub_a in a.groupby(["kind", "layer"]):
        sub_b = b[(b.kind == k) & (b.layer == layer)].set_index("group").score
        if len(sub_a) < MIN_GROUPS_FOR_CORRELATION:     # 3 values rank-correlate as +-1 or +-0.5 only
            sparse.append(k)
            continue
        ranks_a = sub_a.set_index("group").score.rank(pct=True)
        ranks_b = sub_b.rank(pct=True).reindex(ranks_a.index)
        rows.append({"kind": k, "layer": int(layer), "spearman": float(ranks_a.corr(ranks_b))})
        gap = (ranks_a - ranks_b).abs().sort_values(ascending=False).head(3)
        for g, d in gap.items():
            disagreements.append({"kind": k, "layer": int(layer), "group": int(g),
                                  "rank A": round(float(ranks_a[g]), 3),
                                  "rank B": round(float(ranks_b[g]), 3),
                                  "gap": round(float(d), 3)})
    corr = pd.DataFrame(rows, columns=["kind", "layer", "spearman"])
    table = pd.DataFrame(disagreements).sort_values("gap", ascending=False).head(30) if disagreements \
        else pd.DataFrame(columns=DISAGREE_COLUMNS)
    skipped = sorted(set(sparse))
    note = "" if not skipped else (
        f" No rank correlation for {', '.join(figures.KIND_TITLES.get(k, k) for k in skipped)}: fewer than "
        f"{MIN_GROUPS_FOR_CORRELATION} groups per layer, where Spearman's correlation can only take a few "
        "values (with 3 groups: +-1 or +-0.5) and says nothing.")
    title_a, title_b = f"A: {crit_a} / {agg_a}", f"B: {crit_b} / {agg_b}"
    return (figures.importance_heatmap(a, kind, scale, title=title_a),
            figures.importance_heatmap(b, kind, scale, title=title_b),
            figures.rank_correlation_figure(corr, "fewer than 8 groups per layer: no meaningful rank "
                                            "correlation (compare the MLP)"), table, note, hit)


# ----------------------------------------------------------------------------- prune

AMOUNT_MIN, AMOUNT_MAX, AMOUNT_STEP = 0.01, 0.9, 0.01     # the Prune tab's amount slider


def max_amount(store: Store, session: Session, unit: str, attn_share, attn_layers: tuple[int, int],
               mlp_layers: tuple[int, int], hidden_share: float = 0.0) -> float:
    """The largest amount the Prune tab can ask for with these layer ranges: a fraction of groups
    up to AMOUNT_MAX; a share of parameters up to 95% of what the prunable groups (and hidden
    channels, with a hidden share) hold, rounded down to the slider's step (0 when not even one
    step is possible)."""
    if unit != "parameters":
        return AMOUNT_MAX
    share = None if attn_share is None else float(attn_share)
    room = prunable_share(session.original(store).model, share, tuple(map(int, attn_layers)),
                          tuple(map(int, mlp_layers)), hidden_share)
    steps = round(1 / AMOUNT_STEP)
    return float(min(AMOUNT_MAX, np.floor(0.95 * room * steps) / steps))


def amount_advice(top: float, wanted: float, info: dict) -> str:
    """What the page says when the amount asked for cannot be reached with this model."""
    if top >= wanted:
        return ""
    embedding = 1 - info["params_non_embedding"] / info["params"]
    if top < 2 * AMOUNT_MIN:
        return (f"**This model's embeddings hold {100 * embedding:.0f}% of its parameters**: the groups in the "
                f"chosen layers hold too few to remove even {100 * 2 * AMOUNT_MIN:.0f}% of all parameters, so "
                "the amount was switched to a share of **groups** (that share of each pruned layer's groups).")
    return (f"With this model and these layer ranges at most **{100 * top:.0f}%** of all parameters can be "
            f"removed (its embeddings hold {100 * embedding:.0f}% of them): the amount was set to {top:.2f}. "
            "Widen the layer ranges, give attention or the hidden channels a share, or count the amount in "
            "groups.")


def _calibration_of(session: Session) -> CalibrationSpec:
    """The Score step's calibration, or the page's default when Prune comes first."""
    return session.score_settings.get("spec") or CalibrationSpec()


def _scores_for(store: Store, session: Session, score_config: ScoreConfig, config: PruneConfig):
    """Scores of the kinds this plan needs: the Score step's when it used the same criterion and
    aggregation, else scored now on the same calibration tokens."""
    kinds = score_kinds(config)
    have = set(session.scores.kind) if session.scores is not None else set()
    s = session.score_settings
    if not set(kinds) <= have or s.get("criterion") != canonical(score_config.criterion) \
            or s.get("aggregation") != score_config.aggregation:
        run_score(store, session, replace(score_config, kinds=tuple(kinds)), _calibration_of(session))
    return session.scores


def _check_reach(store: Store, session: Session, config: PruneConfig) -> None:
    """An amount the groups cannot give (an API call past the slider's bound) refused before scoring
    (layer ranges outside the model refused first, as such: `unreachable` validates)."""
    why = unreachable(session.original(store).model, config)
    if why:
        raise ValueError(why)


def preview(store: Store, session: Session, score_config: ScoreConfig, config: PruneConfig, scale="linear"):
    """The groups `config` would remove, marked on the heatmaps, and a sentence counting them."""
    _check_reach(store, session, config)
    scores = _scores_for(store, session, score_config, config)
    original = session.original(store).model
    plan = make_plan(original, scores, config, input_ids=session.calibration)   # sensitivity measured there
    removed = plan.removed_groups(scores)
    session.removed = removed
    total = count_params(original)["params"]
    if plan.drop_layers:
        text = f"Will remove decoder layers {plan.drop_layers}."
    else:
        counts = removed.groupby("kind").size().to_dict()
        share = removed.n_params.sum() / total
        text = ("Will remove " + ", ".join(f"{n} {figures.KIND_TITLES.get(k, k).split(':')[-1].strip()}"
                                          for k, n in counts.items())
                + f" = {100 * share:.1f}% of all parameters (marked with x).")
        if plan.hidden_keep is not None and "hidden" not in counts:
            width = session.info["hidden_size"]
            text = (f"First {width - len(plan.hidden_keep)} of the {width} hidden (embedding) channels, ranked by "
                    "activation; then, as counted on the full-width model (Prune scores them again on the "
                    "narrower one): " + text[0].lower() + text[1:])
    return heatmaps(session, scale, removed) + (text,)


QUICK_PPL = f"WikiText-2 ppl (quick: first {QUICK_PPL_WINDOWS} x {QUICK_PPL_SEQ_LEN} tokens)"
QUICK_PPL_DATA = "WikiText-2 text from"
SPEED = f"decode tokens / s (median of {SPEED_RUNS} x {SPEED_TOKENS}, side by side in this run)"
SPEED_HOW = SPEED_TEXT


def measure(model, tokenizer) -> dict:
    """The figures the page shows about one model that belong to its content (measured once per
    model): the engine's model_stats, non-zeros and the protocol's quick perplexity. Decode speed
    is not among them: it belongs to a moment, and `side_by_side` times models shown together."""
    stats = model_stats(model, tokenizer, seq_len=128, throughput=False)
    nonzero = sum(int((p != 0).sum()) for p in {id(p): p for p in model.parameters()}.values())
    figures_ = {"parameters": stats["params"], "non-zero parameters": nonzero,
                "MACs / token": stats["macs_per_token"], "weight memory (MiB)": stats["weight_mib"],
                "forward peak memory (MiB)": stats["forward_peak_mib"], SPEED: None, "decode speed range": None}
    figures_[QUICK_PPL], figures_[QUICK_PPL_DATA] = quick_perplexity(model, tokenizer, data_dir())
    return figures_


def speed_figures(speed: Speed) -> dict:
    return {SPEED: speed.median, "decode speed range": (speed.low, speed.high)}


def speed_text(m: dict) -> str:
    lo, hi = m["decode speed range"]
    return f"{m[SPEED]:.1f} tokens/s (range {lo:.1f}-{hi:.1f})"


def measured(store: Store, session: Session, model_key: str, model) -> dict:
    """`measure` of one model, once per model content (no decode speed: see `side_by_side`)."""
    tokenizer = session.original(store).tokenizer

    def compute():
        with store.admit("measuring", footprint.measure_peak(model)):
            return measure(model, tokenizer)

    return store.compute("measure", {"model": model_key}, compute)[0]


def _speeds_spec(model_keys: list[str]) -> dict:
    return {"models": list(model_keys), "runs": SPEED_RUNS, "tokens": SPEED_TOKENS}


def side_by_side(store: Store, session: Session, named: list[tuple[str, object]]) -> list[dict]:
    """Decode speeds of the models a table shows together, timed in one run, taking turns (the
    protocol's `decode_speeds`); kept for these same models, so a redraw shows the same run."""
    tokenizer = session.original(store).tokenizer
    models = [m for _, m in named]

    def compute():
        with store.admit("timing decode speed", footprint.generate_peak(models, SPEED_TOKENS)), \
                accelerated(*models):
            return [speed_figures(s) for s in decode_speeds(models, tokenizer)]

    return store.compute("speeds", _speeds_spec([k for k, _ in named]), compute)[0]


def cached_measure(store: Store, model_key: str | None) -> dict | None:
    """`measured`'s figures when the store still holds them (a redraw never measures again)."""
    return store.peek(content_key("measure", {"model": model_key})) if model_key else None


def cached_side_by_side(store: Store, model_keys: list[str]) -> list[dict] | None:
    return store.peek(content_key("speeds", _speeds_spec(model_keys)))


def with_speeds(figures_: list[dict], speeds: list[dict] | None) -> list[dict]:
    """Each model's content figures with its decode speed from one side-by-side run."""
    return [{**f, **s} for f, s in zip(figures_, speeds)] if speeds else figures_


def redraw(store: Store, session: Session, scale: str = "rank") -> dict:
    """Every panel a reload must show again, drawn from what the session holds (nothing is
    computed: a part the store no longer holds is left out and comes back when its step runs)."""
    out = {"facts": facts_table(session.info)}
    n = session.info["layers"]
    layer = min(default_layer_range(n)[0], n - 1)
    out["layer"] = layer
    out["structure"] = structure(store, session, layer)
    if session.scores is not None:
        out["heatmaps"] = heatmaps(session, scale)
        top = session.scores.groupby("kind").score.agg(["min", "median", "max"]).reset_index()
        out["score_summary"] = top.assign(**{c: top[c].map(lambda v: f"{v:.4g}") for c in ("min", "median", "max")})
    if session.prune_key:
        value = store.peek(session.prune_key)
        before, after = cached_measure(store, session.original_key), cached_measure(store, session.prune_key)
        if before is not None and after is not None:
            before, after = with_speeds([before, after], cached_side_by_side(
                store, [session.original_key, session.prune_key]))
            out["before_after"] = comparison_table(before, ("pruned", after))
        if value is not None:
            result = value["result"]
            out["widths"] = figures.widths_figure(result.widths_before, result.widths_after, result.sensitivity)
            out["prune_maps"] = heatmaps(session, scale, session.removed)
    recovery = session.recovery
    if recovery is None and session.recovery_key:
        recovery = store.peek(session.recovery_key)
    if recovery is not None and recovery.history:
        out["loss"] = figures.loss_figure(recovery.history)
    if session.evaluations:
        table = pd.DataFrame(session.evaluations)
        out["evaluation"] = (evaluation_display(table), figures.evaluation_figure(table))
    out["models"] = list(session.model_keys())
    out["prune_controls"] = prune_controls(store, session)
    return out


def prune_controls(store: Store, session: Session) -> dict:
    """The Prune tab's amount and layer controls as the session last used them (its last prune's
    config, else the page's defaults for this model), with the amount's feasible maximum."""
    n = session.info["layers"]
    start, end = default_layer_range(n)
    config = (session.steps.get("prune") or {}).get("config") or {}
    config = PruneConfig.from_record(config) if config else RECIPES["default"][1]
    attn, mlp = config.attn_layers or (start, end), config.mlp_layers or (start, end)
    share = config.attn_share if config.attn_share is not None else 0.0
    top = max_amount(store, session, config.unit, share, attn, mlp, config.hidden_share)
    return {"unit": config.unit, "amount": float(config.amount), "top": top, "ranges": (*attn, *mlp)}


COMPARISON_COLUMNS = ["metric", "original", "pruned", "change"]


def _fmt(key: str, v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, tuple):
        return f"{v[0]:.1f}-{v[1]:.1f}"
    if key == SPEED:
        return f"{v:,.1f}"
    if key == QUICK_PPL or abs(v) < 100:
        return f"{v:,.2f}"
    return f"{v:,.0f}"


def comparison_table(before: dict, *afters: tuple[str, dict]) -> pd.DataFrame:
    """metric | original | each model after (with its change), one row per figure of `measure`."""
    rows = []
    for key in before:
        row = {"metric": key, "original": _fmt(key, before[key])}
        for label, after in afters:
            b, a = before[key], after[key]
            row[label] = _fmt(key, a)
            row[f"change ({label})" if len(afters) > 1 else "change"] = (
                "" if isinstance(b, (tuple, str)) or b in (None, 0) or a is None else f"{100 * (a / b - 1):+.1f}%")
        rows.append(row)
    return pd.DataFrame(rows)


def run_prune(store: Store, session: Session, score_config: ScoreConfig, config: PruneConfig, scale="linear",
              progress=None, notes: list[str] | None = None):
    """A pruned copy of the session's original (the Score step's scores reused), measured beside
    the original: the before / after table, kept widths, the heatmaps with the cut, a sentence."""
    score_config = ScoreConfig(canonical(score_config.criterion), score_config.aggregation)
    criterion, aggregation = score_config.criterion, score_config.aggregation
    _check_reach(store, session, config)
    scores = _scores_for(store, session, score_config, config)
    calibrated = needs_calibration(score_config, config)
    calib = _calibration_of(session).record() if calibrated else None
    spec = {"model": session.original_key, "criterion": criterion, "aggregation": aggregation,
            "calibration": calib, "prune": asdict(config)}
    original = session.original(store)
    ids = session.calibration if calibrated else None

    def report(step, total, message):
        if progress:
            progress((step + 0.5) / (total + 1) * 0.7, desc=message)

    def compute():
        samples, seq_len = (ids.shape[0], ids.shape[1]) if ids is not None else (0, 0)
        score_config.low_memory = low_memory_scoring(store, original.model, criterion, samples, seq_len)
        rescores = config.iterative_steps > 1          # later steps score the partly pruned model
        peak = footprint.prune_peak(original.model, criterion, samples, seq_len, scores_cached=not rescores,
                                    low_memory=score_config.low_memory, refit=config.refit)
        with store.admit("pruning", peak, progress), accelerated(original.model):
            # the Score step's scores (same criterion, aggregation, calibration): not computed again
            result = prune_model(original.model, ids, score_config, config, report, scores=scores)
        pruned = result.model.to(next(original.model.parameters()).device)  # on ZeroGPU: back to the CPU
        result.model = None            # held once, under "model" (and counted once by the store)
        return {"model": pruned, "result": result}

    value, hit, key = store.compute("pruned", spec, compute)
    session.remember(key, "pruned", spec, compute)
    result = value["result"]
    # the normalizing notes, then the plan's own (once: a replayed step passes its recorded notes back)
    notes = list(dict.fromkeys([*(notes or []), *result.notes]))
    if progress:
        progress(0.75, desc="measuring before / after (parameters, MACs, memory, tokens/s, perplexity)")
    with accelerated(original.model, value["model"]):
        before = measured(store, session, session.original_key, original.model)
        after = measured(store, session, key, value["model"])
    if progress:
        progress(0.9, desc="timing both models' decoding side by side")
    before, after = with_speeds([before, after], side_by_side(
        store, session, [(session.original_key, original.model), (key, value["model"])]))
    dropped = []
    if key != session.prune_key:        # later results derive from the previous pruned model
        dropped = [what for what, have in (("the LoRA recovery", session.recovery or session.recovery_key),
                                           ("the pruned + LoRA model", session.merged_key)) if have]
        session.recovery, session.recovery_key, session.merged_key = None, None, None
        for later in ("recover", "merge"):
            session.steps.pop(later, None)
    session.prune_key = key
    session.steps["prune"] = {"config": asdict(config), "criterion": criterion, "aggregation": aggregation,
                              "notes": list(notes or [])}
    session.recipe = recipe_record(score_config, config, calib, session.source, result.group_ratios,
                                   notes=notes)
    removed = result.plans[0].removed_groups(scores) if len(result.plans) == 1 else None
    session.removed = removed
    text = (f"Removed {100 * result.report['ratio_params_removed']:.1f}% of the parameters "
            f"({result.report['params_before']:,} -> {result.report['params_after']:,}); "
            f"MACs per token {result.report['macs_per_token_before']:,.0f} -> "
            f"{result.report['macs_per_token_after']:,.0f}. The original model is unchanged."
            + cache_note(hit) + "".join(f"\n\nNote: {n}." for n in notes or [])
            + (f"\n\nNote: {' and '.join(dropped)} of the previous pruned model were dropped: they do not "
               "apply to this one (recover again)." if dropped else ""))
    return (comparison_table(before, ("pruned", after)),
            figures.widths_figure(result.widths_before, result.widths_after, result.sensitivity),
            *heatmaps(session, scale, removed), text)


def magnitude_contrast(store: Store, session: Session, share: float, progress=None):
    """Unstructured magnitude pruning at the same share, beside this session's structured result,
    measured by the same `measure`: zeros inside the same matrices versus smaller matrices."""
    from torch.nn.utils import prune as torch_prune

    share = float(share)
    if not 0 < share < MAX_SHARE:
        raise ValueError(f"the share must be between 0 and {MAX_SHARE}")
    original = session.original(store)

    structured_model = None
    if session.prune_key and store.peek(session.prune_key) is not None:
        structured_model = _pruned_model(store, session)

    def say(fraction, what):
        if progress:
            progress(fraction, desc=what)

    def compute():
        with store.admit("the unstructured contrast", footprint.copy_peak(original.model, 8 * 128), progress):
            say(0.2, f"zeroing the smallest {100 * share:.0f}% of each matrix in a copy")
            sparse = copy.deepcopy(original.model)
            linears = [m for n, m in sparse.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
            for m in linears:
                torch_prune.l1_unstructured(m, "weight", amount=share)
                torch_prune.remove(m, "weight")
            models = [original.model, sparse] + ([structured_model] if structured_model is not None else [])
            with accelerated(*models):
                say(0.35, "quick perplexity of the unstructured copy")
                figures_ = measure(sparse, original.tokenizer)
                say(0.65, f"timing {len(models)} models' decoding side by side")
                speeds = decode_speeds(models, original.tokenizer)      # side by side, taking turns
            return {"sparse": figures_, "speeds": [speed_figures(s) for s in speeds]}

    spec = {"model": session.original_key, "share": share, "structured": session.prune_key
            if structured_model is not None else None}
    value, hit, _ = store.compute("contrast", spec, compute)
    speeds = value["speeds"]
    with accelerated(original.model):
        before = {**measured(store, session, session.original_key, original.model), **speeds[0]}
    sparse = {**value["sparse"], **speeds[1]}
    columns = [(f"unstructured {100 * share:.0f}% of each matrix", sparse)]
    structured = None
    if structured_model is not None:
        structured = {**measured(store, session, session.prune_key, structured_model), **speeds[2]}
        columns.insert(0, ("structured", structured))
    table = comparison_table(before, *columns)
    removed = removed_structures(session.value(store, session.prune_key)["result"]) \
        if structured is not None else ""
    return table, contrast_text(before, sparse, structured, share, removed) + cache_note(hit)


def removed_structures(result) -> str:
    """What a prune removed, counted from the widths before and after: "3 query heads, 2 KV heads
    and 4,608 MLP channels in 12 layers" (only the kinds it removed)."""
    b, a = result.widths_before, result.widths_after
    count = lambda n, what: f"{n:,} {what if n != 1 else what[:-1]}"      # noqa: E731
    parts = []
    if len(a) < len(b):
        parts.append(count(len(b) - len(a), "whole decoder layers"))
    if len(a) == len(b):
        for column, what in (("heads", "query heads"), ("kv_heads", "KV heads"), ("intermediate_size", "MLP channels")):
            n = int((b[column] - a[column]).sum())
            if n:
                parts.append(count(n, what))
        layers = int(((b.drop(columns="layer") - a.drop(columns="layer")) != 0).any(axis=1).sum())
    else:
        layers = len(b) - len(a)
    if not parts:
        return "nothing"
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + (f" in {layers} layers" if len(a) == len(b) else "")


def contrast_text(before: dict, sparse: dict, structured: dict | None, share: float,
                  removed: str = "whole heads and channels") -> str:
    """What the measurement says, in numbers: sparsity zeroes weights in matrices of the same shape
    (dense kernels multiply the zeros too), structured pruning makes the matrices smaller."""
    change = lambda m, k: 100 * (m[k] / before[k] - 1)     # noqa: E731
    zeros = 100 * (1 - sparse["non-zero parameters"] / before["non-zero parameters"])
    text = (f"Unstructured L1 pruning zeroed {100 * share:.0f}% of each projection matrix ({zeros:.1f}% of all "
            "weights: embeddings and norms untouched), but every matrix keeps its shape: "
            f"parameters {change(sparse, 'parameters'):+.1f}%, weight memory "
            f"{change(sparse, 'weight memory (MiB)'):+.1f}%, MACs {change(sparse, 'MACs / token'):+.1f}%, "
            f"decoding {speed_text(before)} -> {speed_text(sparse)}. ")
    if structured is not None:
        text += (f"Structured pruning removed {removed}: parameters "
                 f"{change(structured, 'parameters'):+.1f}%, MACs {change(structured, 'MACs / token'):+.1f}%, "
                 f"decoding {speed_text(structured)}. ")
    else:
        text += "Prune first to see the structured model beside it. "
    return text + ("Decode speeds here were measured side by side, the models taking turns. Dense matrix "
                   "kernels multiply zeros as fast as any other number, so sparsity alone saves neither "
                   "memory nor time; smaller matrices save both (how much of the saving shows up as speed "
                   "depends on the hardware: a small model on a CPU is partly bound by per-token "
                   "overheads). Speed differences within the ranges shown are noise.")


# ----------------------------------------------------------------------------- recover

def _pruned_model(store: Store, session: Session):
    if session.prune_key is None:
        raise ValueError("prune the model first (Prune tab)")
    return session.value(store, session.prune_key)["model"]


def start_recovery(store: Store, session: Session, settings: LoraSettings, data_source: str,
                   preset_name: str = "", progress=None):
    """A cached finished recovery of the same pruned model and settings (returned as `hit`), or a
    new LoraRecovery for this visitor to train; and a note when the chosen data was unavailable
    (book passages offline without a data folder) and the original's own answers stood in.
    `preset_name`: the preset `settings` started from (saved with the session's steps)."""
    pruned = _pruned_model(store, session)
    settings.validate()
    original = session.original(store)
    note = ""
    limit = example_limit(settings)         # the examples read and the cache key agree by construction

    def examples(source):
        def make():
            if progress:
                progress(0.05, desc=f"preparing '{source}' data"
                         + (" (the original model answers the built-in prompts)" if source == "self" else ""))
            with accelerated(original.model):
                return recovery_examples(source, original.tokenizer, settings.seq_len, original.model,
                                         data_dir(), limit=limit)
        return store.compute("examples", {"model": session.original_key, "data": source,
                                          "seq_len": settings.seq_len, "limit": limit}, make)[0]

    try:
        data = examples(data_source)
        if data_source in ("lambada", "wikitext2", "ptb"):
            note = f" Data: '{data_source}' from the {text_origin(data_source, data_dir())}."
    except DataUnavailableError as err:
        if data_source == "self":
            raise
        note = (f" '{data_source}' data is not available here ({str(err).split('.')[0]}), so the original "
                "model's own answers ('self') were used instead.")
        data_source, data = "self", examples("self")
    key = content_key("recovery", {"pruned": session.prune_key, "settings": asdict(settings), "data": data_source})
    if key != session.recovery_key:     # a merge belongs to the recovery it merged
        session.merged_key = None
        session.steps.pop("merge", None)
    finished = store.lookup(key)
    if finished is not None:
        session.recovery, session.recovery_key, session.recovery_data = None, key, data_source
        return finished, True, key, note
    if progress:
        progress(0.5, desc="setting up LoRA on a copy of the pruned model")
    with accelerated(original.model, pruned):
        recovery = LoraRecovery(pruned, original.tokenizer, data, settings,
                                teacher=original.model if settings.distill_weight > 0 else None)
    recovery.cache_key, recovery.preset_name = key, preset_name
    session.recovery, session.recovery_key, session.recovery_data = recovery, None, data_source
    return recovery, False, key, note


def recovery_settings(preset_name: str, steps, lr, distill, ce_weight=None, rank=None,
                      full_finetune=None) -> LoraSettings:
    """A preset with the page's values; a next-token weight, rank or full fine-tuning switch left
    out (a session saved before they were on the page, an API call without them) keeps the preset's."""
    extra = {}
    if ce_weight is not None:
        extra["ce_weight"] = float(ce_weight)
    if rank is not None:
        extra["r"] = int(rank)
    if full_finetune is not None:
        extra["full_finetune"] = bool(full_finetune)
    return preset(preset_name, max_steps=int(steps), learning_rate=float(lr), distill_weight=float(distill),
                  **extra)


def recovery_peak(store: Store, session: Session, settings: LoraSettings) -> int:
    """The transient peak of a recovery (the LoRA copy and its training) for admission."""
    return footprint.recover_peak(_pruned_model(store, session), settings.batch_size, settings.seq_len,
                                  settings.distill_weight > 0, settings.r, settings.full_finetune)


def finish_recovery(store: Store, session: Session, recovery) -> None:
    """A recovery that ran all its steps is shared with the class; a stopped one stays this visitor's
    (under a key of its own). Either is held by the store, so its memory counts in the budget."""
    recovery.teacher = None     # the shared original is not part of the result
    recovery.drop_training_state()      # nor AdamW's moments and float32 masters: it never trains again
    finished = recovery.step >= recovery.settings.max_steps
    key = recovery.cache_key if finished else f"recovery:{session.key}:{recovery.step}"
    store.put(key, "recovery", recovery)
    session.recovery, session.recovery_key = None, key
    if finished:        # a finished recovery is replayable (same settings, data and seed)
        s = recovery.settings
        session.steps["recover"] = {"preset": recovery.preset_name, "steps": s.max_steps, "lr": s.learning_rate,
                                    "distill": s.distill_weight, "ce": s.ce_weight, "rank": s.r,
                                    "full": s.full_finetune,
                                    "data": session.recovery_data}
    else:
        session.steps.pop("recover", None)


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

    def merged_copy():
        with store.admit("merging", footprint.merge_peak(_pruned_model(store, session))):
            return recovery.merge()

    if session.recovery_key:
        merged, hit, key = store.compute("merged", {"recovery": session.recovery_key}, merged_copy)
    else:   # this visitor's own (stopped early) recovery
        key = f"merged:{session.key}:{recovery.step}"
        merged, hit = merged_copy(), False
        store.put(key, "merged", merged)
    session.merged_key = key
    if session.steps.get("recover"):
        session.steps["merge"] = True
    pruned = _pruned_model(store, session)      # measured when it was pruned: served from the cache
    with accelerated(merged):
        before, after = measured(store, session, session.prune_key, pruned), measured(store, session, key, merged)
    before, after = with_speeds([before, after], side_by_side(store, session, [(session.prune_key, pruned),
                                                                               (key, merged)]))
    if before[QUICK_PPL] is None:
        return "Merged the LoRA weights into the pruned model (pruned + LoRA)." + cache_note(hit)
    return (f"Merged after {recovery.step} steps. {QUICK_PPL}: pruned {before[QUICK_PPL]:.2f} -> pruned + "
            f"LoRA {after[QUICK_PPL]:.2f}; decoding {speed_text(before)} -> {speed_text(after)}."
            + cache_note(hit))


def replay(registry: SessionRegistry, store: Store, key: str, steps: dict, progress=None) -> Session:
    """A visitor's session rebuilt after a server restart: the same steps with the same inputs,
    served from the class cache where another visitor already computed them."""
    def say(fraction, what):
        if progress:
            progress(fraction, desc=f"restoring your session after a server restart: {what}")

    say(0.05, "loading the model")
    session, _, _ = load(registry, store, key, steps["load"]["source"])
    if "score" in steps:
        say(0.2, "scoring")
        s = steps["score"]
        run_score(store, session, ScoreConfig(s["criterion"], s["aggregation"], kinds=tuple(s["kinds"])),
                  CalibrationSpec(s["source"], s["samples"], s["seq_len"],
                                  continuation=s.get("continuation", 0)))   # steps saved before it: none
    if "prune" in steps:
        say(0.4, "pruning")
        p = steps["prune"]
        run_prune(store, session, ScoreConfig(p["criterion"], p["aggregation"]),
                  PruneConfig.from_record(p["config"]), notes=p["notes"])
    if "recover" in steps:
        say(0.6, "recovering with LoRA")
        r = steps["recover"]
        settings = recovery_settings(r["preset"], r["steps"], r["lr"], r["distill"],
                                     r.get("ce"), r.get("rank"), r.get("full", False))    # saved before: LoRA
        with store.admit("recovery", recovery_peak(store, session, settings), progress):
            recovery, hit, _, _ = start_recovery(store, session, settings, r["data"], r["preset"])
            if not hit:
                original = session.original(store).model
                with accelerated(original, recovery.model):
                    for _ in recovery.train():
                        pass
                finish_recovery(store, session, recovery)
    if steps.get("merge"):
        say(0.85, "merging")
        merge(store, session)
    session.evaluations = list(steps.get("evaluations") or [])
    session.steps = dict(steps)
    return session


def recovery_curve_results() -> tuple[pd.DataFrame | None, float]:
    """bench/recovery_curve.py's measurements, where this checkout has them (not in a wheel)."""
    path = Path(__file__).resolve().parent.parent / "bench" / "results" / "recovery_curve.json"
    if not path.is_file():
        return None, 0.0
    data = json.loads(path.read_text())
    return pd.DataFrame(data["rows"]), float(data["dense_ppl"])


def methods_results() -> tuple[str, dict | None]:
    """bench/methods.py's table (markdown) and figure (plotly JSON), where this checkout has them."""
    results = Path(__file__).resolve().parent.parent / "bench" / "results"
    # every recipe at 20% and 50%, untuned and after today's quick LoRA (rank 32, lr 2e-3), three
    # draws, and at 20% on the same draws continued by the model as every recipe calibrates today;
    # then the grid after the former rank-8 preset (each table's header names the settings it ran
    # with) and the candidates measured on the way to the default (untuned)
    current = ("methods_quick_grid.md", "methods_builtin_continued.md")
    earlier = ("methods_quick_grid_rank8.md", "methods_draws.md", "methods_50.md")
    figure = results / "methods_quick_grid.plotly.json"

    def read(names):
        return [(results / name).read_text() for name in names if (results / name).is_file()]

    now, before = read(current), read(earlier)
    if not now + before:
        return "Run `python bench/methods.py` to measure the field's methods side by side.", None
    if now and before:
        before.insert(0, "**Earlier runs** (their `minitron` rows are the recipe as it was until 2026-12-05: "
                         "heads and MLP channels, no hidden channels):")
    return "\n\n".join(now + before), json.loads(figure.read_text()) if figure.is_file() else None


# ----------------------------------------------------------------------------- compare

def compare_stream(store: Store, session: Session, prompt: str, settings: GenerationSettings):
    """Yield (texts dict, speeds dict, cached names) while the models generate one after another;
    a generation already made with the same model, prompt and settings is served from the cache.
    Speeds are the protocol's: the models shown are re-timed side by side in one run after they
    have generated (taking turns, so the machine's load hits them alike), not the streamed runs'
    own rates, which include the display and were taken at different moments."""
    models = session.models(store)
    keys = session.model_keys()
    tokenizer = session.original(store).tokenizer
    # checked before any model runs (too long for the page or the context: a clear message); the
    # models share the original's tokenizer and context
    prompt_tokens = prompt_ids(models["original"], tokenizer, prompt, settings).shape[1]
    texts = {name: "" for name in ("original", "pruned", "pruned + LoRA")}
    rates, cached = {}, []
    for name, model in models.items():
        key = content_key("generation", {"model": keys[name], "prompt": prompt, "settings": asdict(settings)})
        done = store.lookup(key)
        if done is not None:
            texts[name] = done["text"]
            cached.append(name)
            yield texts, rates, cached
            continue
        last = None
        peak = footprint.generate_peak([model], settings.max_new_tokens, prompt_tokens)
        with store.admit("generation", peak), accelerated(model):
            for last in stream(model, tokenizer, prompt, settings):
                texts[name] = last["text"]
                yield texts, rates, cached
        store.put(key, "generation", {"text": last["text"], "tokens_per_s": last["tokens_per_s"]}, miss=True)
    for name in texts:
        if name not in models:
            texts[name] = "(not available yet: prune" + (" and recover)" if "LoRA" in name else ")")
    shown = list(models.values())
    with store.admit("timing decode speed", footprint.generate_peak(shown, SPEED_TOKENS)), accelerated(*shown):
        speeds = decode_speeds(shown, tokenizer)        # re-timed now, side by side, every time
    rates = {name: speed_text(speed_figures(s)) for name, s in zip(models, speeds)}
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
            res = {"ppl": {}, "acc": {}, "details": {}}
            rest = list(corpora)
            if "wikitext2" in corpora and is_quick_perplexity("wikitext2", int(windows)):
                quick = measured(store, session, keys[name], models[name])     # the protocol's, measured once
                if quick[QUICK_PPL] is not None:
                    res["ppl"]["wikitext2"] = quick[QUICK_PPL]
                    res["details"]["wikitext2"] = {"data": quick[QUICK_PPL_DATA]}
                    rest.remove("wikitext2")
            if rest or tasks:
                def on_part(j, total, part, i=i, name=name):
                    if progress:
                        progress((i + j / total) / len(chosen),
                                 desc=f"evaluating {name}: {part} ({j + 1} of {total})")
                with store.admit("evaluation", footprint.evaluate_peak(models[name]), progress), \
                        accelerated(models[name]):
                    more = evaluate(models[name], tokenizer, rest, tasks, max_windows=int(windows),
                                    limit=int(limit), data_dir_path=data_dir(), progress=False,
                                    on_part=on_part)
                for part in res:
                    res[part].update(more[part])
                res["acc_mean"] = more.get("acc_mean")
            row = {"params": count_params(models[name])["params"],
                   "data": {what: d["data"] for what, d in res["details"].items()}}
            row.update({f"{c} ppl": res["ppl"][c] for c in corpora if c in res["ppl"]})
            for task, value in res["acc"].items():
                d = res["details"][task]
                row[task] = value
                row[f"{task} stderr"] = d["acc_norm_stderr"] if task in NORMED_TASKS else d["acc_stderr"]
                row[f"{task} n"] = d["n"]
            if res.get("acc_mean") is not None and len(res["acc"]) > 1:
                row["average"] = res["acc_mean"]
                errors = [row[f"{t} stderr"] for t in res["acc"]]
                row["average stderr"] = float(np.sqrt(np.sum(np.square(errors))) / len(errors))
            return row

        spec = {"model": keys[name], "corpora": sorted(corpora), "tasks": sorted(tasks),
                "windows": int(windows), "limit": int(limit)}
        row, hit, _ = store.compute("evaluation", spec, compute)
        hits += hit
        rows.append({"model": name, **row})
    session.evaluations = [r for r in session.evaluations if r["model"] not in chosen] + rows
    session.steps["evaluations"] = session.evaluations
    return pd.DataFrame(session.evaluations), hits


EVALUATION_COLUMNS = ["model", "parameters"]


def evaluation_sources(table: pd.DataFrame) -> str:
    """Where each evaluated set came from (a data folder, the hub, a shipped slice), in words."""
    if table is None or table.empty or "data" not in table.columns:
        return ""
    found: dict[str, str] = {}
    for sources in table["data"]:
        if isinstance(sources, dict):
            found.update(sources)
    return "; ".join(f"{what}: {origin}" for what, origin in sorted(found.items()))


def evaluation_display(table: pd.DataFrame) -> pd.DataFrame:
    """The Evaluate tab's table: parameters with separators, perplexity to 2 decimals, accuracy in
    percent with its standard error (the paper's Table 1 reports acc_norm where lm-eval defines it)."""
    if table is None or table.empty:
        return pd.DataFrame(columns=EVALUATION_COLUMNS + ["wikitext2 ppl"])
    out = pd.DataFrame({"model": table.model, "parameters": [f"{int(p):,}" for p in table.params]})
    for col in table.columns:
        if col.endswith(" ppl"):
            out[col] = [f"{v:,.2f}" if pd.notna(v) else "" for v in table[col]]
    for col in table.columns:
        if f"{col} stderr" in table.columns:
            out[f"{col} acc % (± s.e.)"] = [
                f"{100 * v:.1f} ± {100 * e:.1f}" if pd.notna(v) else ""
                for v, e in zip(table[col], table[f"{col} stderr"])]
    return out


# ----------------------------------------------------------------------------- export

def _exportable(store: Store, session: Session, which: str) -> tuple[dict, dict, str]:
    """The session's models and keys, and the file name of `which` (a pruned model, not the original)."""
    models = session.models(store)
    if which not in models or which == "original":
        raise ValueError("prune (and optionally recover + merge) before exporting")
    return models, session.model_keys(), "pruned" if which == "pruned" else "pruned-lora"


EXPORT_SHARD = "200MB"      # weights in shards, each moved into the zip and deleted: no second full copy
_EXPORTS: list[ExportDisk] = []


def export_disk() -> ExportDisk:
    """The server's one export folder under its disk budget (created on first use)."""
    if not _EXPORTS:
        _EXPORTS.append(ExportDisk())
    return _EXPORTS[0]


def _written(store: Store, kind: str, spec: dict, compute, path_field: str) -> tuple[dict, bool]:
    """An export's files from the cache, written again when the disk budget deleted them."""
    files, hit, key = store.compute(kind, spec, compute)
    if not export_disk().touch(files[path_field]):
        store.drop(key)
        files, hit, key = store.compute(kind, spec, compute)
    return files, hit


@contextlib.contextmanager
def _export_folder(key: str, nbytes: int, what: str):
    """A new folder under the export root with `nbytes` of disk promised to it; deleted on failure."""
    disk = export_disk()
    folder = disk.new_folder(key)
    try:
        disk.reserve(folder, nbytes, what)
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        disk.done(folder)


def export(store: Store, session: Session, which: str, progress=None) -> tuple[str, str, str | None, str, bool]:
    models, keys, name = _exportable(store, session, which)
    recipe = dict(session.recipe)
    recovery = current_recovery(store, session) if which != "pruned" else None
    if recovery is not None:
        recipe = with_recovery(recipe, recovery.settings, recovery.step, session.recovery_data)
    tokenizer = session.original(store).tokenizer

    def compute():
        if progress:
            progress(0.1, desc="measuring both models for the model card")
        before = measured(store, session, session.original_key, models["original"])
        after = measured(store, session, keys[which], models[which])
        stats = card_stats({"params_before": before["parameters"], "params_after": after["parameters"],
                            "macs_per_token_before": before["MACs / token"],
                            "macs_per_token_after": after["MACs / token"]},
                           before[QUICK_PPL], after[QUICK_PPL],
                           f"{QUICK_PPL_TEXT} (the dashboard's quick figure)")
        disk = footprint.export_disk_bytes(models[which], shard_bytes=200 * 10**6)
        with _export_folder(keys[which], disk, "this export") as folder:
            if progress:
                progress(0.2, desc="writing safetensors, config and tokenizer")
            with store.admit("export", footprint.export_peak(models[which]), progress):
                save(models[which], folder / name, tokenizer, recipe=json.loads(json.dumps(recipe, default=str)),
                     stats=stats, max_shard_size=EXPORT_SHARD)
            loader = loader_of(folder / name)
            if progress:
                progress(0.6, desc="moving the files into one zip")
            archive = zip_folder(folder, name)
            recipe_path = folder / "recipe.json"
            recipe_path.write_text(json.dumps(recipe, indent=2, default=str) + "\n")
            adapter = None
            if recovery is not None:
                if progress:
                    progress(0.85, desc="saving the LoRA adapter")
                if recovery.save_adapter(folder / "adapter") is not None:      # None: fully fine-tuned
                    adapter = zip_folder(folder, "adapter", "lora-adapter")
        return {"archive": archive, "recipe": str(recipe_path), "adapter": adapter, "loader": loader}

    files, hit = _written(store, "export", {"model": keys[which], "recipe": recipe}, compute, "archive")
    return files["archive"], files["recipe"], files["adapter"], files["loader"], hit


def export_gguf(store: Store, session: Session, which: str, precision: str = "f16",
                progress=None) -> tuple[str, str, bool]:
    """One GGUF file of a session model for llama.cpp / ollama / LM Studio, and a sentence on it."""
    from pruner.gguf_export import describe, write_gguf

    models, keys, name = _exportable(store, session, which)
    tokenizer = session.original(store).tokenizer
    base_model = session.recipe.get("base_model") or getattr(models["original"].config, "_name_or_path", "")

    def compute():
        peak = footprint.export_peak(models[which], precision)
        with _export_folder(f"{keys[which]}:gguf", peak, "this GGUF export") as folder:
            if progress:
                progress(0.2, desc=f"writing {precision} GGUF")
            with store.admit("GGUF export", peak, progress):
                summary = write_gguf(models[which], tokenizer, folder / f"{name}-{precision}.gguf", precision,
                                     base_model=base_model)
        return {"path": str(summary.path), "sentence": describe(summary)}

    files, hit = _written(store, "gguf", {"model": keys[which], "precision": precision}, compute, "path")
    return files["path"], files["sentence"], hit


def zip_folder(root: Path, name: str, archive_name: str | None = None) -> str:
    """root/name -> root/archive_name.zip, moving each file into the archive (added, then deleted:
    the disk holds one copy plus the file being moved), stored uncompressed: safetensors weights
    barely compress, and deflating hundreds of MB took most of an export's time on a CPU."""
    import zipfile

    archive = root / f"{archive_name or name}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        for path in sorted((root / name).rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(root))
                path.unlink()
    shutil.rmtree(root / name, ignore_errors=True)
    return str(archive)


def push_to_hub(store: Store, session: Session, which: str, repo_id: str, token: str) -> str:
    if not token:
        raise ValueError("a Hugging Face write token is needed to push")
    if which not in session.models(store) or which == "original":
        raise ValueError("prune before pushing")
    import zipfile

    archive, *_ = export(store, session, which)
    with _export_folder(f"push:{repo_id}", Path(archive).stat().st_size, "unpacking for the push") as folder:
        with zipfile.ZipFile(archive) as z:
            z.extractall(folder)
        try:
            name = next(p.parent for p in folder.rglob("config.json"))
            return f"Pushed to {push(name, repo_id, token)}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
