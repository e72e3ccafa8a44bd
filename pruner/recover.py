"""LoRA recovery of a pruned model (peft), LLM-Pruner's post-training step, made interactive.

    rec = LoraRecovery(pruned, tokenizer, examples, PRESETS["quick"], teacher=original)
    for progress in rec.train():          # {"step", "loss", "ce", "kl", "lr", "elapsed", ...}
        draw(progress)                    # rec.stop() ends it after the current step
    merged = rec.merge()                  # a plain model with the LoRA deltas folded in

Data: alpaca-style instructions (hub yahma/alpaca-cleaned, or a local .json/.jsonl with
instruction/input/output), plain text, or **self-generated**: the original model answers the
built-in prompts (pruner/assets/instructions.txt), so recovery works offline and teaches the pruned
model to follow its parent; `distill_weight` adds a KL term to the original model's logits.
The original and pruned models are never modified: training runs on a copy.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from array import array
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .models import context_length, decoder_body, full_finetune_weights, head_projection, training_autocast_dtype
from .data import ASSETS, DataUnavailableError, read_text_source
from .options import Range, check, option
from .resources import reusing_freed_memory

LLM_PRUNER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BUILTIN_PROMPTS = ASSETS / "instructions.txt"
ALPACA_TEMPLATE = ("Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                   "### Response:\n")
ALPACA_TEMPLATE_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                         "provides further context. Write a response that appropriately completes "
                         "the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                         "### Response:\n")


MAX_RECOVERY_STEPS = 5000     # the most optimizer steps a run may ask for (the llm-pruner preset: 1,600)


@dataclass
class LoraSettings:
    """LLM-Pruner's LoRA defaults (r=8, alpha=16, dropout 0.05, all seven projections)."""

    r: int = option(8, "LoRA rank", bounds=Range(1, None), flag="--rank", label="LoRA rank")
    alpha: int = option(16, "LoRA alpha (the update is scaled by alpha / r)", bounds=Range(0, None, lo_closed=False))
    dropout: float = option(0.05, "LoRA dropout", bounds=Range(0.0, 1.0, hi_closed=False))
    target_modules: tuple[str, ...] = LLM_PRUNER_TARGETS
    learning_rate: float = option(1e-4, "peak learning rate (linear warm-up, cosine decay to 10%)",
                                  bounds=Range(0, None, lo_closed=False), flag="--lr", label="learning rate")
    batch_size: int = option(4, "sequences per micro-batch", bounds=Range(1, None))
    grad_accum: int = option(1, "micro-batches per optimizer step", bounds=Range(1, None))
    seq_len: int = option(256, "tokens per training sequence", bounds=Range(8, None))
    max_steps: int = option(200, "optimizer steps", bounds=Range(1, MAX_RECOVERY_STEPS), flag="--steps",
                            label="steps")
    time_budget_s: float | None = option(None, "stop after this many seconds", bounds=Range(0, None),
                                         type=float, flag="--time-budget", unit="seconds")
    warmup_steps: int = option(10, "linear warm-up steps", bounds=Range(0, None))
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ce_weight: float = option(1.0, "weight of the next-token cross-entropy on the training text (0: learn the "
                              "original's distribution alone)", bounds=Range(0.0, None), flag="--ce-weight",
                              label="next-token weight")
    distill_weight: float = option(0.0, "weight of the KL to the original (teacher) next to the next-token loss",
                                   bounds=Range(0.0, None), flag="--distill", label="distillation weight")
    distill_temperature: float = option(1.0, "distillation temperature", bounds=Range(0, None, lo_closed=False))
    full_finetune: bool = option(False, "train every weight of the pruned model except the embeddings "
                                 "(and a head tied to them) instead of LoRA adapters: a gradient and AdamW's "
                                 "two moments per weight, no adapter to save", label="full fine-tuning")
    mixed_precision: bool = option(True, "compute the training's forward and backward in bfloat16 where the "
                                   "weights are float32 and the device multiplies bfloat16 natively (a CPU "
                                   "with AVX512-BF16 or AMX, an Ampere or newer GPU); weights, adapters, "
                                   "optimizer and loss stay float32")
    train_on_inputs: bool = False      # False: the loss covers response tokens only
    seed: int = 0

    def validate(self) -> None:
        check(self)
        if self.ce_weight == 0 and self.distill_weight == 0:
            raise ValueError("nothing to learn: the next-token weight and the distillation weight are both 0")


PRESETS = {
    # a class period on a 2-core CPU (<= 90 s): 48 steps x 4 x 128 tokens of book passages,
    # distilled from the original on every position (bench/recovery_curve.py: book text + KL beats
    # the original's own answers + KL and needs no generation; CE alone on the answers overfits).
    # The KL to the original plus half the next-token loss on the books, rank 32, lr 2e-3, and every
    # step's gradient clipped to norm 0.05 (below the norm of a typical step, so each step is
    # normalized). 48 steps fit 90 s because the steps run in bfloat16 where the CPU multiplies it
    # natively (`mixed_precision`: 1.5 s vs 1.9 s a step here, the same result at 24 steps: 1.836x
    # vs 1.84x), and since 2026-12-04 in 1.15-1.24 s (the loss's hand-made gradient, cached head
    # casts, fused AdamW, one heap per run: 56-84 s of recovery on the book draws; README).
    # Measured on the default recipe's pruned model over three self-calibration draws (seeds 0-2,
    # WikiText-2 first 256 windows; bench/methods.py --recover --calib-data self): the former CE + KL
    # at rank 8, lr 1.5e-3, clip 1, 24 steps: 1.94 / 2.04 / 1.92x dense (mean 1.97x); KL-led,
    # 24 steps: 1.84 / 1.99 / 1.92x (1.92x); the same with clip 1 1.86 / 2.02 / 2.00x (1.96x); KL-led,
    # 48 steps in bfloat16: see the README (bench/results/methods_quick_self*.json).
    # Exploring on seed 0 alone (24 steps): KL-led at rank 8 1.91x (1.5e-3), 1.86x (3e-3, 5e-3);
    # rank 64 at 3e-3 1.82x (twice the adapter memory); rank 32 at 5e-3 1.92x; full fine-tuning
    # (no LoRA) at lr 3e-4 1.85x, with ten times the trainable memory. The books' own held-out
    # passages get *worse* under the KL-led loss (1.33x vs 1.22x dense): the pruned model stops
    # imitating the training text. Recovering on the model's own samples instead of books: 1.89x.
    # Distilling every layer's output too (48 steps, first 10 x 64 book-passage draw, the preset
    # 1.916x there): weight 1 1.924x, 10 1.906x, 50 1.928x: noise, not taken.
    # A distillation temperature of 2 or 4 there: 1.938x, 1.937x (worse; T stays 1).
    # The next-token weight there (first 10 x 64 book draw / seed-0 self draw): 0 1.929x / -,
    # 0.05 (the former preset) 1.916x / 1.781x, 0.2 1.873x / 1.743x, 0.3 1.851x / 1.742x,
    # 0.5 1.840x / 1.752x, 1 1.844x / 1.774x, 2 1.914x / -: 0.5 (best on the books, tied with 0.3
    # on the mean of the two). The learning rate at that weight, there: 4e-3 1.988x / 1.781x,
    # 3e-3 (the former preset) 1.840x / 1.752x, 2e-3 1.823x / 1.750x, 1.5e-3 1.851x / 1.791x:
    # 2e-3 (three draws each: book 1.84x vs 1.86x at 3e-3, self 1.79x vs 1.80x, built-in 1.86x
    # either way; README).
    # No LoRA dropout: over 24 steps it changes nothing measurable and costs 17% of the time.
    "quick": LoraSettings(r=32, alpha=64, learning_rate=2e-3, batch_size=4, seq_len=128, max_steps=48,
                          warmup_steps=2, ce_weight=0.5, distill_weight=1.0, dropout=0.0,
                          max_grad_norm=0.05),
    # a longer run on book passages, distilled from the dense model on every position (<= 20
    # minutes on a 2-core CPU with native bfloat16: 760 steps, 1,050 s of training and 1,097 s for
    # the CLI command on 2026-12-04, 1.518x; 600 steps there, the preset until then: 878 s, 1.540x;
    # on the depth-allocated default, 2026-12-05 with AMX: 987 s, 1.501x; on the score-shaped one:
    # 1,028 s, 1.485x; on the squared-Taylor one: 1,035 s, 1.490x; on today's, calibrated on text
    # sampled plainly: 1,041 s, 1.416x; on a GPU: README),
    # training every weight but the embeddings (full fine-tuning: 0.9 GiB of gradients and AdamW
    # state on the default model, which a 135M model affords; a LoRA is a flag away). On the default
    # recipe's pruned model (self-generated calibration, seed 0, WikiText-2 first 256 windows), all with the whole
    # next-token loss + KL: LoRA rank 8, 360 steps: 1.67x dense; rank 64, 360 steps (819 s): 1.62x;
    # rank 64, 600 steps in bfloat16 (1187 s): 1.59x; full fine-tuning at lr 3e-4, 360 steps in
    # float32 (750 s): 1.59x (1e-4: 1.63x); 600 steps in bfloat16 (931 s): 1.55x, at lr 5e-4 1.65x;
    # reading every book passage instead of repeating the first 2,000 (`example_limit`): 1.54x;
    # at lr 2e-4 1.549x, with the next-token loss at 0.3 of the KL 1.553x, training the tied
    # embeddings too 1.642x, the cosine decayed to 0 instead of 10% 1.561x, every layer's output
    # distilled too (relative squared error per token, weight 10) 1.566x, every step's gradient
    # clipped to norm 0.05 as in `quick` 1.543x (noise: the clip stays at 1); the weights averaged
    # over the run's end (the preset re-run beside them: 1.551x) 1.560x as an EMA (decay 0.99 from
    # step 300), 1.563x as the plain mean of steps 400-600 (the cosine ends at 10% of the peak).
    # The KL-led loss of `quick` gave 1.70x with LoRA rank 32 over 360 steps (it wins short runs only).
    "thorough": LoraSettings(full_finetune=True, learning_rate=3e-4, batch_size=4, seq_len=128, max_steps=760,
                             warmup_steps=15, distill_weight=1.0),
    # LLM-Pruner's post_training.py: lr 1e-4, batch 64 (4 x 16), cutoff 256, 2 epochs of alpaca
    "llm-pruner": LoraSettings(learning_rate=1e-4, batch_size=4, grad_accum=16, seq_len=256,
                               max_steps=1600, warmup_steps=100),
}


# the data each preset was measured with ("lambada": book passages of LAMBADA's test split, a
# benchmark this project does not report, from --data-dir or the hub; the dashboard falls back to
# "self", the original's answers to built-in instructions, where they are unavailable)
PRESET_DATA = {"quick": "lambada", "thorough": "lambada", "llm-pruner": "alpaca"}


@dataclass
class Example:
    prompt: str          # formatted prompt (not trained on unless train_on_inputs); "" for plain text
    response: str


# ----------------------------------------------------------------------------- data

def _chat_prompt(tokenizer, instruction: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                             add_generation_prompt=True, tokenize=False)
    return ALPACA_TEMPLATE.format(instruction=instruction)


def _alpaca_prompt(row: dict) -> str:
    if row.get("input"):
        return ALPACA_TEMPLATE_INPUT.format(instruction=row["instruction"], input=row["input"])
    return ALPACA_TEMPLATE.format(instruction=row["instruction"])


def instruction_examples(source: str = "alpaca", limit: int | None = 2000) -> list[Example]:
    """Alpaca-style rows from a local .json/.jsonl file or the hub (yahma/alpaca-cleaned),
    in LLM-Pruner's alpaca prompt template."""
    path = Path(source).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        rows = json.loads(text) if path.suffix == ".json" else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        hub_id = "yahma/alpaca-cleaned" if source == "alpaca" else source
        try:
            import datasets

            rows = list(datasets.load_dataset(hub_id, split="train").select(range(limit or 51760)))
        except Exception as err:
            raise DataUnavailableError(
                f"instruction data {source!r} is not available ({type(err).__name__}). Use a local "
                ".json/.jsonl with instruction/input/output fields, network access to the hub "
                "(yahma/alpaca-cleaned), or the offline 'self' source.") from err
    missing = [k for k in ("instruction", "output") if rows and k not in rows[0]]
    if missing:
        raise DataUnavailableError(f"instruction rows need fields instruction/output; missing {missing}")
    rows = rows[:limit] if limit else rows
    return [Example(_alpaca_prompt(r), r["output"]) for r in rows]


def text_examples(source: str, tokenizer, seq_len: int, data_dir_path=None,
                  limit: int | None = 2000) -> list[Example]:
    """Plain text cut into `seq_len`-token pieces (trained on every token)."""
    text = read_text_source(source, data_dir_path)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    pieces = [ids[i: i + seq_len] for i in range(0, max(1, len(ids) - seq_len // 2), seq_len)]
    pieces = [p for p in pieces if len(p) > seq_len // 4][: limit or None]
    return [Example("", tokenizer.decode(p)) for p in pieces]


def builtin_prompts() -> list[str]:
    return [line.strip() for line in BUILTIN_PROMPTS.read_text(encoding="utf-8").splitlines()
            if line.strip()]


@torch.no_grad()
def self_generated_examples(teacher, tokenizer, prompts: list[str] | None = None,
                            samples_per_prompt: int = 1, max_new_tokens: int = 80,
                            temperature: float = 0.7, seed: int = 0, batch_size: int = 64,
                            progress=None) -> list[Example]:
    """The original model answers `prompts` (sampled, seeded): offline data that teaches the
    pruned model to behave like its parent. Answers stop at the model's context (a tiny model's
    128 positions); a batch whose longest prompt fills it gets none."""
    prompts = prompts or builtin_prompts()
    context = context_length(teacher)
    formatted = [_chat_prompt(tokenizer, p) for p in prompts for _ in range(samples_per_prompt)]
    device = next(teacher.parameters()).device
    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    examples = []
    try:
        for start in range(0, len(formatted), batch_size):
            chunk = formatted[start: start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            width = enc.input_ids.shape[1]                  # the batch's longest prompt, left-padded
            room = max_new_tokens if context is None else min(max_new_tokens, context - width)
            if room >= 1:
                out = teacher.generate(**enc, max_new_tokens=room, do_sample=True,
                                       temperature=temperature, top_p=0.9,
                                       pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
                for prompt, row in zip(chunk, out[:, width:]):
                    examples.append(Example(prompt, tokenizer.decode(row, skip_special_tokens=True).strip()))
            if progress:
                progress(min(start + batch_size, len(formatted)), len(formatted))
    finally:
        tokenizer.padding_side = side
    return [e for e in examples if e.response]


EXAMPLE_POOL = 2000     # examples a short run samples its batches from (the first of the text's pieces)


def example_limit(settings: LoraSettings) -> int | None:
    """How many examples a run reads: the first EXAMPLE_POOL, or all of them when the run would
    see that pool more than once (`thorough`: 3,040 of 4 x 128 tokens; every book passage, 1.54x
    against 1.55x with the pool repeated; LLM-Pruner's 2 epochs of Alpaca)."""
    needed = settings.max_steps * settings.batch_size * settings.grad_accum
    return None if needed > EXAMPLE_POOL else EXAMPLE_POOL


def recovery_examples(source: str, tokenizer, seq_len: int, teacher=None, data_dir_path=None,
                      limit: int | None = EXAMPLE_POOL, seed: int = 0, progress=None) -> list[Example]:
    """"self" (teacher-written answers), "alpaca" / an instruction .json(l), or text
    ("builtin", a .txt file, a hub dataset with a text column)."""
    if source == "self":
        if teacher is None:
            raise ValueError("self-generated recovery data needs the original model as teacher")
        return self_generated_examples(teacher, tokenizer, seed=seed, progress=progress)
    path = Path(source).expanduser()
    if source == "alpaca" or (path.is_file() and path.suffix in (".json", ".jsonl")
                              and _looks_like_instructions(path)):
        return instruction_examples(source, limit)
    return text_examples(source, tokenizer, seq_len, data_dir_path, limit)


def _looks_like_instructions(path: Path) -> bool:
    head = path.read_text(encoding="utf-8")[:2000]
    return '"instruction"' in head


# ----------------------------------------------------------------------------- batches

def tokenize_examples(examples: list[Example], tokenizer, seq_len: int,
                      train_on_inputs: bool = False) -> list[tuple[array, array]]:
    """(input_ids, labels) per example as int32 arrays (4 bytes a token, where a list of Python
    ints takes up to 36: an 8-byte pointer and a 28-byte int; a run over a whole instruction set
    holds every example); prompt tokens get label -100 unless train_on_inputs."""
    out = []
    eos = tokenizer.eos_token_id
    for ex in examples:
        prompt = tokenizer(ex.prompt, add_special_tokens=False).input_ids if ex.prompt else []
        response = tokenizer(ex.response, add_special_tokens=False).input_ids
        if ex.prompt and eos is not None:
            response = response + [eos]
        ids = (prompt + response)[:seq_len]
        labels = (([-100] * len(prompt)) if not train_on_inputs else prompt[:]) + response
        labels = labels[:seq_len]
        if sum(1 for y in labels[1:] if y != -100) > 0:
            out.append((array("i", ids), array("i", labels)))
    if not out:
        raise ValueError("no recovery example has a trainable token; check the data and seq_len")
    return out


def collate(items: list[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict:
    """Right-padded (B, L) input_ids, attention_mask and labels (-100 on padding)."""
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batches(tokenized, batch_size: int, seed: int) -> Iterator[list]:
    """Endless shuffled batches (reshuffled every epoch, seeded)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(tokenized), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            yield [tokenized[i] for i in order[start: start + batch_size]]


# ----------------------------------------------------------------------------- training

def lora_loss(student_logits, labels, teacher_logits=None, distill_weight: float = 0.0,
              temperature: float = 1.0, ce_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, ce, kl): ce_weight x next-token CE on labelled positions, plus distill_weight * T^2 *
    KL(teacher || student) on the same positions."""
    logits = student_logits[:, :-1].float()                              # (B, L-1, V)
    target = labels[:, 1:]                                               # (B, L-1)
    keep = target != -100
    ce = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    kl = torch.zeros((), device=logits.device)
    if teacher_logits is not None and distill_weight > 0:
        t = teacher_logits[:, :-1].float()[keep] / temperature
        s = logits[keep] / temperature
        kl = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True,
                                        reduction="batchmean") * temperature ** 2
    return ce_weight * ce + distill_weight * kl, ce.detach(), kl.detach()


LOSS_CHUNK = 128    # positions projected to the vocabulary at a time in the training loss


@torch.no_grad()
def _loss_and_logit_grad(logits, target, teacher_logits, distill_weight: float, temperature: float,
                         ce_weight: float, work: torch.Tensor):
    """(gradient, ce, kl) of ce_weight x summed next-token CE + distill_weight x T^2 x summed
    KL(teacher || student) over these c positions (no teacher: `teacher_logits` None), the gradient
    taken by hand with respect to the (c, V) `logits` and returned in float32: ce_weight
    (softmax(s) - onehot) + distill_weight T (softmax(s / T) - softmax(t / T)). Autograd's way
    through cross_entropy and kl_div made three log-softmaxes of the block and two backward passes
    of them (a sixth of a training step on the default model); this makes two log-softmaxes,
    student and teacher, and works in `work`, a (4, >= c, V) float32 scratch block the caller
    reuses from chunk to chunk (a fresh (c, V) block cost more than its arithmetic there: the
    default model's is 25 MB). The gradient lives in it."""
    c = len(target)
    s, log_p, t, log_t = (block[:c] for block in work)                 # each (c, V)
    torch.log_softmax(s.copy_(logits), -1, out=log_p)
    ce = -log_p.gather(1, target[:, None]).sum()
    kl = torch.zeros((), device=logits.device)
    if teacher_logits is None:
        grad = log_p.exp_().mul_(ce_weight)                              # ce_weight softmax(s)
    else:
        scale = distill_weight * temperature
        log_q = log_p if temperature == 1 else s.div(temperature).log_softmax(-1)
        torch.log_softmax(t.copy_(teacher_logits).div_(temperature), -1, out=log_t)
        p_t = torch.exp(log_t, out=t)
        kl = log_t.sub_(log_q).mul_(p_t).sum() * temperature ** 2       # sum p_t (log p_t - log q)
        if temperature == 1:
            grad = log_p.exp_().mul_(ce_weight + scale)
        else:
            grad = log_p.exp_().mul_(ce_weight).add_(log_q.exp_(), alpha=scale)
        grad.sub_(p_t, alpha=scale)
    grad[torch.arange(c, device=logits.device), target] -= ce_weight
    return grad, ce, kl


def lora_loss_backward(model, batch: dict, teacher=None, distill_weight: float = 0.0,
                       temperature: float = 1.0, multiplier=1.0, chunk: int = LOSS_CHUNK,
                       ce_weight: float = 1.0, head_casts: dict | None = None):
    """`lora_loss` of one batch with its backward pass (gradients x `multiplier` accumulate in the
    trainable weights), never holding the (tokens x vocab) logits of the whole batch: the body
    runs once, then `chunk` labelled positions at a time are projected, scored and back-propagated
    into a detached copy of the hidden states, whose gradient finally flows through the body.
    The teacher's logits are made chunk by chunk too. The same loss and gradients as `lora_loss`
    (tested), which stays as the readable full-logits reference; on the default model at 4 x 128
    tokens a full logits block is 0.1 GB, and the loss made several of them (student, teacher,
    their float32 and log-softmax copies). `head_casts`: see `models.head_projection` (a training
    run keeps its frozen output weights' casts there from step to step). Returns (total, ce, kl),
    detached."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    hidden = decoder_body(model)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]                                               # (B, L-1)
    keep = target != -100
    h, target = hidden[:, :-1][keep], target[keep]                      # (n, H), (n,)
    n = target.numel()
    zero = torch.zeros((), device=h.device)
    if n == 0:
        return zero, zero, zero
    teacher_h = None
    if teacher is not None and distill_weight > 0:
        with torch.no_grad():
            teacher_h = decoder_body(teacher)(input_ids=ids, attention_mask=mask,
                                              use_cache=False).last_hidden_state[:, :-1][keep]
    leaf = h.detach().requires_grad_()
    ce_sum, kl_sum = zero.clone(), zero.clone()
    student_head = head_projection(model, head_casts)
    with torch.no_grad():
        teacher_head = head_projection(teacher, head_casts) if teacher_h is not None else None
    work = None
    for s in range(0, n, chunk):
        logits = student_head(leaf[s: s + chunk])                         # (c, V), autocast's dtype
        t = None
        if teacher_head is not None:
            with torch.no_grad():
                t = teacher_head(teacher_h[s: s + chunk])                   # (c, V)
        if work is None:
            work = torch.empty((4, min(chunk, n), logits.shape[-1]), dtype=torch.float32, device=logits.device)
        grad, ce, kl = _loss_and_logit_grad(logits.detach(), target[s: s + chunk], t, distill_weight,
                                            temperature, ce_weight, work)
        logits.backward(grad.mul_(multiplier / n).to(logits.dtype))
        ce_sum += ce
        kl_sum += kl
    h.backward(leaf.grad)
    ce, kl = ce_sum / n, kl_sum / n
    return ce_weight * ce + distill_weight * kl, ce, kl


def adamw(params, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused into one kernel over every tensor where this torch has it for the weights'
    device (`thorough`'s 79M trained weights on the default model: 0.04 s a step instead of
    0.16-0.21 s on this project's 2-core CPU), else torch's default implementation."""
    try:
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)


class FloatMasters:
    """float32 master copies of the 16-bit weights a run trains (full fine-tuning of a bfloat16
    model, as a GPU loads it): AdamW steps the copies and each weight takes its copy's rounding.
    Stepped on the weights themselves, updates below half a bfloat16 spacing (2^-9 of a weight:
    lr 3e-4 against a weight of 0.1, and every step of a decayed schedule) round away. float32
    weights are stepped directly (`params` passes them through)."""

    def __init__(self, params: list):
        self.pairs = [(p, p.detach().float()) for p in params if p.dtype in (torch.bfloat16, torch.float16)]
        held = {id(p) for p, _ in self.pairs}
        self.params = [p for p in params if id(p) not in held] + [m for _, m in self.pairs]

    def gather_grads(self) -> None:
        """Each 16-bit weight's gradient onto its master, in float32 (the weight's own freed)."""
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.to(m.device, torch.float32)
            p.grad = None

    @torch.no_grad()
    def write_back(self) -> None:
        for p, m in self.pairs:
            p.copy_(m)


def lr_at(step: int, settings: LoraSettings) -> float:
    """Linear warm-up, then cosine decay to 10% over max_steps."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.max_steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def seconds_left(history: list[dict], settings: LoraSettings, recent: int = 10) -> float | None:
    """Seconds the run still needs at the pace of its last `recent` steps (None before its second
    step: the first carries one-off set-up), capped by the time budget. A step's time differs by
    3x between processors (a 2-core CPU with bfloat16 instructions against one without), so the
    page and the CLI say what this machine needs instead of quoting a preset's measured time."""
    if len(history) < 2:
        return None
    window = history[-(recent + 1):]
    pace = (window[-1]["elapsed"] - window[0]["elapsed"]) / (len(window) - 1)   # seconds a step
    left = pace * max(0, settings.max_steps - history[-1]["step"])
    if settings.time_budget_s is not None:
        left = min(left, max(0.0, settings.time_budget_s - history[-1]["elapsed"]))
    return left


def progress_text(history: list[dict], settings: LoraSettings) -> str:
    """"12s, about 40s left" after the last step of `history` ("12s" alone before a pace is known
    or once done)."""
    left = seconds_left(history, settings)
    return f"{history[-1]['elapsed']:.0f}s" + (f", about {left:.0f}s left" if left is not None and left >= 0.5 else "")


class LoraRecovery:
    """LoRA fine-tuning of a copy of `model`; `train()` yields progress, `merge()` folds it in."""

    def __init__(self, model, tokenizer, examples: list[Example], settings: LoraSettings | None = None,
                 teacher=None, in_place: bool = False):
        """in_place: train on `model` itself instead of a copy (the caller owns it, e.g. the CLI)."""
        from peft import LoraConfig, get_peft_model

        self.settings = settings or LoraSettings()
        self.settings.validate()
        if self.settings.distill_weight > 0 and teacher is None:
            raise ValueError("distill_weight > 0 needs the original model as teacher")
        self.tokenizer, self.teacher = tokenizer, teacher
        self.tokenized = tokenize_examples(examples, tokenizer, self.settings.seq_len,
                                           self.settings.train_on_inputs)
        torch.manual_seed(self.settings.seed)
        base = model if in_place else copy.deepcopy(model)
        for p in base.parameters():
            p.requires_grad_(False)
        if self.settings.full_finetune:
            if next(base.parameters()).dtype == torch.float16:
                raise ValueError("full fine-tuning needs float32 or bfloat16 weights (AdamW on float16 weights "
                                 "loses its small updates); use LoRA here (full_finetune off)")
            self.model = base
            for p in full_finetune_weights(base):
                p.requires_grad_(True)
        else:
            targets = tuple(self.settings.target_modules)
            if set(targets) == set(LLM_PRUNER_TARGETS):      # "every projection", in this family's names
                from .arch import arch_of

                targets = arch_of(model).lora_targets()
            config = LoraConfig(r=self.settings.r, lora_alpha=self.settings.alpha,
                                lora_dropout=self.settings.dropout, target_modules=list(targets),
                                bias="none", task_type="CAUSAL_LM")
            self.model = get_peft_model(base, config)
        self.device = next(self.model.parameters()).device
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.masters = FloatMasters(trainable)          # none where the trained weights are float32
        self.optimizer = adamw(self.masters.params, self.settings.learning_rate, self.settings.weight_decay)
        # float16 weights (a GPU without native bfloat16): dynamic loss scaling keeps gradients
        # flowing through the float16 base from underflowing
        half = next(base.parameters()).dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if half and self.device.type == "cuda" else None
        self.history: list[dict] = []
        self.step = 0
        self._stop = False
        # the frozen output projections' autocast copies (student's and teacher's), kept from step
        # to step of one train() (two casts a step otherwise: 57 MB each on the default model)
        self._head_casts: dict = {}
        self._batches = batches(self.tokenized, self.settings.batch_size, self.settings.seed)
        self.trainable_params = sum(p.numel() for p in trainable)

    # what only training needs: AdamW's moments, float32 master weights (dropped once it is over)
    TRAINING_STATE = ("optimizer", "masters")

    def drop_training_state(self) -> None:
        """Free what only further steps would use: a finished recovery never trains again."""
        for name in self.TRAINING_STATE:
            setattr(self, name, None)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """bfloat16 where `mixed_precision` is on and float32 weights sit on a device that multiplies
        it natively (this project's CPU: 1.5 s instead of 1.9 s a quick-preset step, the same result
        at 24 steps: 1.836x vs 1.84x dense on the default recipe's pruned model), else None. Asked
        at every step: on ZeroGPU the model moves to the GPU for each call."""
        weight = next(self.model.parameters())
        return training_autocast_dtype(weight.device, weight.dtype) if self.settings.mixed_precision else None

    def _autocast(self):
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(next(self.model.parameters()).device.type, dtype=dtype)

    def stop(self) -> None:
        """End training after the step in progress."""
        self._stop = True

    @reusing_freed_memory()      # freed activations reused within the step, returned after it
    def train_step(self) -> dict:
        """One optimizer step (grad_accum micro-batches); returns its figures."""
        s = self.settings
        self.model.train()
        lr = lr_at(self.step, s)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
        tokens = 0
        device = next(self.model.parameters()).device       # where the model is now (ZeroGPU moves it)
        # the loss scale of float16 training (a tensor: scaler.scale also starts the scaler)
        multiplier = (self.scaler.scale(torch.ones((), device=device)) if self.scaler else 1.0) / s.grad_accum
        for _ in range(s.grad_accum):
            batch = collate(next(self._batches), self.tokenizer.pad_token_id or 0)
            batch = {k: v.to(device) for k, v in batch.items()}
            teacher = self.teacher if s.distill_weight > 0 else None
            with self._autocast():
                loss, ce, kl = lora_loss_backward(self.model, batch, teacher, s.distill_weight,
                                                  s.distill_temperature, multiplier, ce_weight=s.ce_weight,
                                                  head_casts=self._head_casts)
            totals["loss"] += loss.item() / s.grad_accum
            totals["ce"] += ce.item() / s.grad_accum
            totals["kl"] += kl.item() / s.grad_accum
            tokens += int(batch["attention_mask"].sum())
        self.masters.gather_grads()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.masters.params, s.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.masters.write_back()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "lr": lr, "tokens": tokens, **totals}

    def train(self) -> Iterator[dict]:
        """Yield {"step", "loss", "ce", "kl", "lr", "tokens", "elapsed"} after every step until
        max_steps, the time budget, or stop()."""
        start = time.perf_counter() - (self.history[-1]["elapsed"] if self.history else 0.0)
        self._stop = False
        try:
            while self.step < self.settings.max_steps and not self._stop:
                figures = self.train_step()
                figures["elapsed"] = time.perf_counter() - start
                self.history.append(figures)
                yield figures
                budget = self.settings.time_budget_s
                if budget is not None and figures["elapsed"] >= budget:
                    break
        finally:
            self._head_casts.clear()
        self.model.eval()

    def save_adapter(self, directory) -> Path | None:
        """peft's own format: adapter_config.json + adapter_model.safetensors; None after full
        fine-tuning (no adapter: the merged model is the result)."""
        if self.settings.full_finetune:
            return None
        out = Path(directory).expanduser()
        self.model.save_pretrained(out)
        (out / "recovery.json").write_text(json.dumps(
            {"settings": asdict(self.settings), "steps": self.step,
             "history": self.history[-200:]}, indent=2, default=str) + "\n")
        return out

    def merge(self, in_place: bool = False):
        """A plain model with the LoRA deltas merged (after full fine-tuning: the trained model).
        The adapter model stays usable, unless `in_place` (no copy: the adapter model is consumed;
        save the adapter first)."""
        merged = self.model if in_place else copy.deepcopy(self.model)
        if not self.settings.full_finetune:
            merged = merged.merge_and_unload()
        merged.eval()
        for p in merged.parameters():
            p.requires_grad_(False)
        return merged


def preset(name: str, **overrides) -> LoraSettings:
    """A preset with some fields changed; a new rank without an alpha keeps the preset's alpha / r
    (the scale of the LoRA update)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; use one of {sorted(PRESETS)}")
    chosen = PRESETS[name]
    if "r" in overrides and "alpha" not in overrides:
        overrides["alpha"] = max(1, round(chosen.alpha * int(overrides["r"]) / chosen.r))
    return replace(chosen, **overrides)
