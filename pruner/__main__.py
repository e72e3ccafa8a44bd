"""Command line: python -m pruner {inspect,score,prune,export,eval,recover,push,generate} ...

Every subcommand accepts --json: the last stdout line is then one JSON object with its figures.
Argument parsing stays here; the library receives dataclass configs only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .data import CALIBRATION_LEN, CALIBRATION_SAMPLES, CalibrationSpec, DataUnavailableError
from .criteria import REGISTRY
from .importance import ScoreConfig
from .models import ModelLoadError
from .options import add_arguments, options
from .prune import PruneConfig
from .recipes import RECIPE_NOTES, RECIPES
from .recover import PRESET_DATA, PRESETS, LoraSettings, progress_text
from .resources import return_large_frees_to_os
from .tasks import TASKS


def _range(text: str) -> tuple[int, int]:
    """'3:28' -> (3, 28), end exclusive."""
    try:
        start, end = (int(x) for x in text.split(":"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"layer range must look like START:END, got {text!r}") from err
    return start, end


def _memory(text: str) -> dict:
    """'0=20GiB,cpu=60GiB' -> {0: '20GiB', 'cpu': '60GiB'}."""
    try:
        pairs = (item.split("=") for item in text.split(",") if item.strip())
        return {int(k) if k.strip().isdigit() else k.strip(): v.strip() for k, v in pairs}
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"max memory must look like 0=20GiB,cpu=60GiB, got {text!r}") from err


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2-135M-Instruct, offline), a hub id, or a local folder")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp32 on cpu)")
    p.add_argument("--device-map", default=None,
                   help="auto | balanced: spread a model too large for one GPU over all GPUs (accelerate)")
    p.add_argument("--max-memory", type=_memory, default=None,
                   help="with --device-map: per-device caps, e.g. 0=20GiB,1=20GiB,cpu=60GiB")
    p.add_argument("--json", action="store_true", help="end with one JSON line of all figures")


# LoraSettings fields whose CLI flags are generated from their options
RECOVER_FLAGS = ["max_steps", "learning_rate", "batch_size", "seq_len", "r", "ce_weight", "distill_weight",
                 "full_finetune", "mixed_precision", "time_budget_s"]
# PruneConfig fields whose CLI flags are generated from their options
PRUNE_FLAGS = ["amount", "unit", "strategy", "scope", "attn_granularity", "attn_share", "hidden_share", "compensate",
               "recompute_means", "refit", "allocation", "layer_spread", "score_shape", "probe_tokens", "round_to",
               "iterative_steps", "prune_attn", "prune_mlp"]


class _AmountIn(argparse.Action):
    """`--ratio R` / `--target-params S`: the amount with its unit in one flag."""

    def __init__(self, *args, unit: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.unit = unit

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.unit = self.unit


def _calibration(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    start = RECIPES["default"][0] if defaults else None       # score: the default recipe's, as on the page
    crit, agg = options(ScoreConfig)["criterion"], options(ScoreConfig)["aggregation"]
    p.add_argument(crit.flag, default=start.criterion if start else None, choices=crit.choices,
                   help=(crit.info() + ": " + "; ".join(f"{n}: {c.formula.split('   ')[0]}"
                                                       for n, c in REGISTRY.items())).replace("%", "%%"))
    p.add_argument(agg.flag, default=start.aggregation if start else None, choices=agg.choices, help=agg.info())
    calib = options(CalibrationSpec)
    p.add_argument("--calib-data", default=CalibrationSpec().source, help=calib["source"].info())
    p.add_argument("--calib-samples", type=int, default=CALIBRATION_SAMPLES, help=calib["samples"].info())
    p.add_argument("--calib-len", type=int, default=CALIBRATION_LEN, help=calib["seq_len"].info())
    p.add_argument("--calib-continue", type=int, default=CalibrationSpec().continuation,
                   help=calib["continuation"].info())
    p.add_argument("--data-dir", default=None, help="local evaluation data (else $PRUNER_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0)


def _gguf(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--gguf", default=None, required=required, metavar="OUT.gguf",
                   help="also write a GGUF file for llama.cpp / ollama / LM Studio")
    p.add_argument("--gguf-precision", default="f16", choices=("f16", "f32"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pruner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="architecture, coupled groups and parameter counts")
    _common(p)
    p.add_argument("--layer", type=int, default=None, help="list one layer's groups in detail")

    p = sub.add_parser("score", help="group importance for every layer")
    _common(p)
    _calibration(p)
    p.add_argument("--kinds", default="attn,mlp", help="comma list of attn, mlp, hidden")
    p.add_argument("--out", default=None, help="save the scores DataFrame (.csv or .parquet)")

    p = sub.add_parser("prune", help="score, prune, report and optionally save")
    _common(p)
    p.add_argument("--preset", default="default", choices=list(RECIPES),
                   help=("; ".join(f"{name} ({cite}): {what}" for name, (cite, what) in RECIPE_NOTES.items())
                         + ". Any flag below overrides the preset's value.").replace("%", "%%"))
    _calibration(p, defaults=False)
    add_arguments(p, PruneConfig, PRUNE_FLAGS, defaults_from="the preset's")
    for flag, unit in (("--ratio", "groups"), ("--target-params", "parameters")):
        p.add_argument(flag, type=float, action=_AmountIn, unit=unit, dest="amount", metavar="AMOUNT",
                       help=f"shorthand for --amount AMOUNT --unit {unit}")
    p.add_argument("--one-ratio", action="store_true",
                   help="one group ratio for attention and MLP (LLM-Pruner), no budget split")
    p.add_argument("--layers", type=_range, default=None,
                   help="START:END layers pruned (both kinds; default skips first 3, last 2)")
    for name in ("attn_layers", "mlp_layers"):
        opt = options(PruneConfig)[name]
        p.add_argument(opt.flag, type=_range, default=None, metavar="START:END", help=opt.info())
    p.add_argument("--out", default=None, help="save the pruned model to this folder")
    _gguf(p)

    p = sub.add_parser("export", help="write a model (an export folder, a hub id, default) as GGUF for llama.cpp")
    _common(p)
    _gguf(p, required=True)

    p = sub.add_parser("eval", help="perplexity and zero-shot accuracy (the paper's Table 1)")
    _common(p)
    p.add_argument("--ppl", default="wikitext2,ptb", help="comma list of wikitext2, ptb ('' for none)")
    p.add_argument("--tasks", default="", help="comma list of " + ",".join(TASKS))
    p.add_argument("--seq-len", type=int, default=128, help="perplexity window (LLM-Pruner: 128)")
    p.add_argument("--max-windows", type=int, default=None, help="first N perplexity windows")
    p.add_argument("--limit", type=int, default=None, help="first N documents per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data-dir", default=None, help="local evaluation data (else $PRUNER_DATA_DIR)")
    p.add_argument("--stats", action="store_true", help="also params, MACs, memory, tokens/s")

    p = sub.add_parser("recover", help="LoRA recovery of a pruned model, then merge and save")
    _common(p)
    p.add_argument("--teacher", default="default",
                   help="the original model, for self-generated data and distillation ('' for none)")
    p.add_argument("--data", default=None,
                   help="self (the teacher answers built-in prompts), lambada (book passages), alpaca, an "
                        "instruction .json/.jsonl, or text (builtin, a .txt file); default: the data the "
                        "preset was measured with (quick, thorough: lambada; llm-pruner: alpaca)")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    add_arguments(p, LoraSettings, RECOVER_FLAGS, defaults_from="the preset's")
    p.add_argument("--ppl-windows", type=int, default=32,
                   help="WikiText-2 windows to measure before/after (0 to skip)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the merged model (+ adapter/ inside)")
    _gguf(p)

    p = sub.add_parser("push", help="upload an export folder to the Hugging Face Hub (token: $HF_TOKEN)")
    p.add_argument("--model", required=True, help="an export folder (prune / recover --out)")
    p.add_argument("--repo-id", required=True, help="owner/name")
    p.add_argument("--private", action="store_true")
    p.add_argument("--json", action="store_true", help="end with one JSON line")

    p = sub.add_parser("generate", help="stream a generation")
    _common(p)
    p.add_argument("--prompt", default=None, help="default: the paper's Leaning Tower of Pisa prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat", action="store_true", help="plain continuation, no chat template")
    p.add_argument("--compare", default="",
                   help="comma list of more models generating with identical settings, side by side")
    return parser


def _emit(args, figures: dict) -> None:
    if args.json:
        print(json.dumps(figures, default=str))


def _load(args):
    from .models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map,
                      max_memory=args.max_memory)


def _calib_ids(args, tokenizer, model):
    """The calibration tokens the flags describe (`self`: sampled by `model`)."""
    from .data import SELF_SOURCE, calibration_ids, continued_length, self_text_is_kept

    if args.calib_data == SELF_SOURCE:
        kept = self_text_is_kept(model, tokenizer, args.calib_samples, args.calib_len, args.seed)
        how = "read back from disk (the model wrote them before)" if kept else "written by the model"
        print(f"calibration: {2 * args.calib_samples} short documents (self, seed {args.seed}) {how}; "
              f"{args.calib_samples} x {args.calib_len} tokens are drawn from them", file=sys.stderr, flush=True)
    else:
        new = continued_length(args.calib_data, args.calib_len, args.calib_continue, model)
        if new:
            print(f"calibration: {args.calib_samples} x {args.calib_len} tokens of {args.calib_data}, each "
                  f"continued by {new} tokens the model writes (--calib-continue 0: the text alone)",
                  file=sys.stderr, flush=True)
    return calibration_ids(tokenizer, args.calib_data, args.calib_samples, args.calib_len,
                           args.seed, args.data_dir, model, args.calib_continue)


def cmd_inspect(args) -> dict:
    from .groups import describe_groups, describe_layer
    from .models import describe_model

    model, _ = _load(args)
    info = describe_model(model)
    for key, value in info.items():
        print(f"{key:>22}: {value:,}" if isinstance(value, int) and not isinstance(value, bool)
              else f"{key:>22}: {value}")
    groups = describe_groups(model)
    summary = groups.groupby("kind").agg(layers=("layer", "count"), groups_per_layer=("groups", "first"),
                                         params_per_group=("params_per_group", "first"))
    print("\ncoupled groups (per layer):\n" + summary.to_string())
    if args.layer is not None:
        detail = describe_layer(model, args.layer)
        attn = detail[detail.kind == "attn"]
        print(f"\nlayer {args.layer} attention groups:\n" + attn.to_string(index=False))
        mlp = detail[(detail.kind == "mlp") & (detail.group < 2)]
        print(f"\nlayer {args.layer} MLP groups 0-1 (of {detail[detail.kind == 'mlp'].group.nunique()}):\n"
              + mlp.to_string(index=False))
    info["groups"] = groups.to_dict("records")
    return info


def cmd_score(args) -> dict:
    from .importance import CALIBRATION_FREE, ScoreConfig, score

    model, tokenizer = _load(args)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    start = time.perf_counter()
    config = ScoreConfig(args.criterion, args.aggregation, kinds=kinds, seed=args.seed)
    df = score(model, None if config.criterion in CALIBRATION_FREE else _calib_ids(args, tokenizer, model), config)
    seconds = time.perf_counter() - start
    summary = df.groupby("kind").score.describe()[["count", "mean", "min", "max"]]
    print(f"{args.criterion} / {args.aggregation} scores in {seconds:.1f}s\n{summary.to_string()}")
    per_layer = df[df.kind != "hidden"].groupby(["layer", "kind"]).score.mean().unstack()
    print("\nmean score per layer:\n" + per_layer.to_string(float_format=lambda v: f"{v:.4g}"))
    if args.out:
        if args.out.endswith(".parquet"):
            df.to_parquet(args.out, index=False)
        else:
            df.to_csv(args.out, index=False)
        print(f"saved {len(df)} rows to {args.out}")
    return {"rows": len(df), "seconds": seconds, "out": args.out,
            "mean_score": df.groupby("kind").score.mean().to_dict()}


def cmd_prune(args) -> dict:
    from .card import card_stats
    from .export import loader_of, save
    from .prune import needs_calibration, prune_model, unreachable
    from .recipes import recipe, recipe_record

    model, tokenizer = _load(args)
    _check_gguf(args, model)
    prune_changes = {name: getattr(args, options(PruneConfig)[name].dest)
                     for name in PRUNE_FLAGS}
    prune_changes.update(attn_layers=args.attn_layers or args.layers, mlp_layers=args.mlp_layers or args.layers)
    score_config, config = recipe(args.preset, {"criterion": args.criterion,
                                                "aggregation": args.aggregation, "seed": args.seed},
                                  prune_changes)
    if args.one_ratio or args.attn is False or args.mlp is False:
        config.attn_share = None
    config, notes = config.normalized(model)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    args.criterion, args.aggregation = score_config.criterion, score_config.aggregation
    start = time.perf_counter()

    def progress(step, total, message):
        print(f"[{step}/{total}] {message}", file=sys.stderr, flush=True)

    why = unreachable(model, config)
    if why:
        raise ValueError(why)                       # before the calibration text is read or written
    calibrated = needs_calibration(score_config, config)
    ids = _calib_ids(args, tokenizer, model) if calibrated else None
    result = prune_model(model, ids, score_config, config, progress, in_place=True)
    seconds = time.perf_counter() - start
    report = dict(result.report)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    notes = list(notes) + result.notes
    print(f"pruned in {seconds:.1f}s (preset {args.preset}: {config.strategy}, {config.scope}, "
          f"{args.criterion}/{args.aggregation}, attention share {config.attn_share}, "
          f"hidden channels' share {config.hidden_share}, "
          f"compensation {config.compensate}, allocation {config.allocation})")
    print(f"parameters: {report['params_before']:,} -> {report['params_after']:,} "
          f"({100 * report['ratio_params_removed']:.1f}% removed; non-embedding "
          f"{100 * report['ratio_non_embedding_removed']:.1f}%)")
    if "hidden_params_removed" in report:
        print(f"hidden (embedding) channels: {result.model.config.hidden_size} kept, "
              f"{report['hidden_params_removed']:,} parameters removed with them")
    print(f"MACs/token: {report['macs_per_token_before']:,.0f} -> {report['macs_per_token_after']:,.0f}")
    print("kept widths per layer:\n" + result.widths_after.to_string(index=False))
    if result.sensitivity is not None:
        print("per-layer sensitivity (calibration loss increase when pruned alone):\n"
              + result.sensitivity.round(5).to_string(index=False))
    calibration = {"source": args.calib_data, "samples": args.calib_samples, "seq_len": args.calib_len,
                   "seed": args.seed, "continuation": int(ids.shape[1]) - args.calib_len} if calibrated else None
    recipe = recipe_record(score_config, config, calibration, args.model, result.group_ratios,
                           args.preset, notes)
    if args.out:
        save(result.model, args.out, tokenizer, recipe, stats=card_stats(report))
        report["loader"] = loader_of(args.out)
        print(f"saved to {args.out}; load it with {report['loader']}")
    if args.gguf:
        report["gguf"] = _write_gguf(args, result.model, tokenizer)
    if result.sensitivity is not None:
        report["sensitivity"] = result.sensitivity.to_dict("records")
    report.update(out=args.out, seconds=seconds, group_ratios=result.group_ratios,
                  kept=result.widths_after.to_dict("records"), recipe=recipe)
    return report


def cmd_generate(args) -> dict:
    from .generate import PAPER_PROMPT, GenerationSettings, stream
    from .models import load_model

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                  chat_template=False if args.no_chat else None)
    settings.validate()
    prompt = args.prompt if args.prompt is not None else PAPER_PROMPT
    outputs = {}
    for source in [args.model] + _split(args.compare):
        model, tokenizer = load_model(source, device=args.device, dtype=args.dtype)
        chat = settings.chat_template is not False and bool(getattr(tokenizer, "chat_template", None))
        print(f"\n=== {source}\n{prompt}", end="\n" if chat else "", flush=True)
        shown, last = 0, None
        for last in stream(model, tokenizer, prompt, settings):
            print(last["text"][shown:], end="", flush=True)
            shown = len(last["text"])
        print(f"\n[{last['tokens']} tokens, {last['tokens_per_s']:.1f} tokens/s]", flush=True)
        outputs[source] = {"text": last["text"], "tokens": last["tokens"],
                           "tokens_per_s": last["tokens_per_s"]}
        del model
    first = outputs[args.model]
    return {"prompt": prompt, "settings": vars(settings), **first, "models": outputs}


def _split(text: str) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def cmd_eval(args) -> dict:
    from .evaluate import evaluate, model_stats

    model, tokenizer = _load(args)
    result = evaluate(model, tokenizer, _split(args.ppl), _split(args.tasks), args.seq_len,
                      args.max_windows, args.limit, args.batch_size, args.data_dir)
    for corpus, value in result["ppl"].items():
        d = result["details"][corpus]
        print(f"{corpus:>14} ppl {value:10.2f}   ({d['windows']} windows x {d['seq_len']} tokens)")
    for task, value in result["acc"].items():
        d = result["details"][task]
        norm = f"acc_norm {d['acc_norm']:.4f} +- {d['acc_norm_stderr']:.4f}  " if "acc_norm" in d else ""
        print(f"{task:>14} acc {d['acc']:.4f} +- {d['acc_stderr']:.4f}  {norm}(n={d['n']})")
    if "acc_mean" in result:
        print(f"{'average':>14} {result['acc_mean']:.4f}")
    if args.stats:
        result["stats"] = model_stats(model, tokenizer)
        print("stats: " + ", ".join(f"{k}={v:,.1f}" for k, v in result["stats"].items()))
    return result


def cmd_recover(args) -> dict:

    from .evaluate import perplexity
    from .export import save
    from .models import load_model
    from .card import card_stats
    from .recipes import with_recovery
    from .recover import LoraRecovery, example_limit, preset, recovery_examples
    from .stats import count_params

    model, tokenizer = _load(args)
    _check_gguf(args, model)
    teacher = load_model(args.teacher, device=args.device, dtype=args.dtype)[0] if args.teacher else None
    overrides = {k: v for k, v in [*((name, getattr(args, options(LoraSettings)[name].dest))
                                     for name in RECOVER_FLAGS), ("seed", args.seed)]
                 if v is not None}
    if teacher is None:
        overrides["distill_weight"] = 0.0
        overrides.setdefault("ce_weight", 1.0)      # without a teacher the next-token loss is the whole objective
    settings = preset(args.preset, **overrides)
    args.data = args.data or PRESET_DATA.get(args.preset, "self")
    print(f"preparing '{args.data}' recovery data ...", file=sys.stderr, flush=True)
    examples = recovery_examples(args.data, tokenizer, settings.seq_len, teacher, args.data_dir,
                                 limit=example_limit(settings), seed=args.seed)

    def ppl(m):
        if not args.ppl_windows:
            return None
        return perplexity(m, tokenizer, "wikitext2", max_windows=args.ppl_windows,
                          data_dir_path=args.data_dir, progress=False)["ppl"]

    before = ppl(model)
    size_before = count_params(model)["params"]
    before_recipe = (getattr(model.config, "pruning", None) or {}).get("recipe") or {"base_model": args.model}
    rec = LoraRecovery(model, tokenizer, examples, settings, teacher, in_place=True)    # we own the model
    print(f"{len(examples)} examples, {rec.trainable_params:,} "
          f"{'trained weights (full fine-tuning)' if settings.full_finetune else 'LoRA parameters'}, "
          f"{settings.max_steps} steps", file=sys.stderr)
    for f in rec.train():
        print(f"step {f['step']:4d}  loss {f['loss']:.4f}  ce {f['ce']:.4f}  kl {f['kl']:.4f}  "
              f"lr {f['lr']:.2e}  {progress_text(rec.history, settings)}", flush=True)
    if args.out:
        adapter = rec.save_adapter(f"{args.out}/adapter")    # before the in-place merge consumes it
    merged = rec.merge(in_place=True)
    after = ppl(merged)
    if before is not None:
        print(f"WikiText-2 ppl ({args.ppl_windows} windows): {before:.2f} -> {after:.2f}")
    if args.out:
        sizes = {"params_before": size_before, "params_after": count_params(merged)["params"]}
        protocol = f"WikiText-2, first {args.ppl_windows} windows of 128 tokens, before / after recovery"
        save(merged, args.out, tokenizer, recipe=with_recovery(before_recipe, settings, rec.step, args.data),
             stats=card_stats(sizes, before, after, protocol if before is not None else None))
        print(f"saved the merged model to {args.out}" + (f" and the adapter to {adapter}" if adapter else ""))
    gguf = _write_gguf(args, merged, tokenizer) if args.gguf else None
    return {"steps": rec.step, "final_loss": rec.history[-1]["loss"] if rec.history else None,
            "ppl_before": before, "ppl_after": after, "examples": len(examples),
            "seconds": rec.history[-1]["elapsed"] if rec.history else 0.0, "out": args.out,
            "loss_curve": [round(h["loss"], 4) for h in rec.history], "gguf": gguf}


def _write_gguf(args, model, tokenizer) -> dict:
    from .gguf_export import write_gguf

    summary = write_gguf(model, tokenizer, args.gguf, args.gguf_precision)
    print(f"wrote {summary.sentence()}")
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    return {"path": str(summary.path), "architecture": summary.architecture, "bytes": summary.bytes,
            "precision": summary.precision, "notes": summary.notes}


def _check_gguf(args, model) -> None:
    """Refuse an impossible --gguf before the long work, not after it."""
    if args.gguf:
        from .gguf_export import check_exportable
        check_exportable(model)


def cmd_export(args) -> dict:
    model, tokenizer = _load(args)
    return _write_gguf(args, model, tokenizer)


def cmd_push(args) -> dict:
    from .card import push

    url = push(args.model, args.repo_id, private=args.private)
    print(f"pushed {args.model} to {url}")
    return {"url": url, "repo_id": args.repo_id}


COMMANDS = {"inspect": cmd_inspect, "export": cmd_export, "push": cmd_push, "score": cmd_score, "prune": cmd_prune, "eval": cmd_eval,
            "recover": cmd_recover, "generate": cmd_generate}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return_large_frees_to_os()
    try:
        figures = COMMANDS[args.command](args)
    except (ModelLoadError, DataUnavailableError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _emit(args, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
