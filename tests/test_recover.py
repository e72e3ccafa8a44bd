"""LoRA recovery: the loss falls, progress streams, stop works, merge is exact, nothing else moves."""

import json

import pytest
import torch

from pruner.recover import (EXAMPLE_POOL, Example, LoraRecovery, LoraSettings, _chat_prompt, collate,
                            example_limit, lora_loss, lr_at, preset, progress_text, recovery_examples, seconds_left,
                            self_generated_examples, tokenize_examples)

TEXT = [Example("", "the quick brown fox jumps over the lazy dog. " * 3)] * 4


def small(**kw):
    base = dict(learning_rate=3e-2, batch_size=2, seq_len=32, max_steps=12, warmup_steps=1,
                dropout=0.0)
    base.update(kw)
    return LoraSettings(**base)


def test_loss_falls_and_progress_streams(vocab_model, tokenizer):
    with torch.no_grad():
        vocab_model.lm_head.weight.mul_(50.0)   # a random 0.02-std head can barely move its logits
    rec = LoraRecovery(vocab_model, tokenizer, TEXT, small())
    history = list(rec.train())
    assert [h["step"] for h in history] == list(range(1, 13))
    assert {"loss", "ce", "kl", "lr", "elapsed", "tokens"} <= set(history[0])
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert all(b["elapsed"] >= a["elapsed"] for a, b in zip(history, history[1:]))


def test_stop_and_time_budget(vocab_model, tokenizer):
    rec = LoraRecovery(vocab_model, tokenizer, TEXT, small(max_steps=50))
    for h in rec.train():
        if h["step"] == 3:
            rec.stop()
    assert rec.step == 3
    rec2 = LoraRecovery(vocab_model, tokenizer, TEXT, small(max_steps=50, time_budget_s=0.0))
    assert len(list(rec2.train())) == 1


def test_merge_is_exact_and_originals_untouched(vocab_model, tokenizer, tmp_path):
    before = {k: v.clone() for k, v in vocab_model.state_dict().items()}
    rec = LoraRecovery(vocab_model, tokenizer, TEXT, small(max_steps=3))
    list(rec.train())
    ids = torch.randint(5, 1000, (2, 12))
    with torch.no_grad():
        adapted = rec.model(input_ids=ids).logits
        merged_model = rec.merge()
        merged = merged_model(input_ids=ids).logits
        original = vocab_model(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged, original)
    assert all(torch.equal(before[k], v) for k, v in vocab_model.state_dict().items())
    assert type(merged_model).__name__ == "LlamaForCausalLM"
    out = rec.save_adapter(tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                             "up_proj", "down_proj"}
    assert (out / "adapter_model.safetensors").is_file()


def test_prompt_tokens_are_masked(tokenizer):
    items = tokenize_examples([Example("Say hi:", " hi there")], tokenizer, 64)
    ids, labels = items[0]
    n_prompt = len(tokenizer("Say hi:", add_special_tokens=False).input_ids)
    assert list(labels[:n_prompt]) == [-100] * n_prompt and labels[-1] == tokenizer.eos_token_id
    assert ids.itemsize == labels.itemsize == 4          # int32 arrays: 4 bytes a token, not a list's ~36
    batch = collate(items + [(ids[:3], labels[:3])], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, len(ids)) and batch["attention_mask"][1].sum() == 3
    assert (batch["labels"][1, 3:] == -100).all()


def test_distillation_loss_matches_hand_kl():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :2] = -100
    total, ce, kl = lora_loss(s, labels, t, distill_weight=0.5, temperature=2.0)
    keep = labels[:, 1:] != -100
    ps, pt = (s[:, :-1][keep] / 2).log_softmax(-1), (t[:, :-1][keep] / 2).log_softmax(-1)
    hand_kl = (pt.exp() * (pt - ps)).sum(-1).mean() * 4
    assert kl.item() == pytest.approx(hand_kl.item(), rel=1e-5)
    assert total.item() == pytest.approx(ce.item() + 0.5 * hand_kl.item(), rel=1e-5)
    hand_ce = torch.nn.functional.cross_entropy(s[:, :-1][keep], labels[:, 1:][keep])
    weighted, ce_again, _ = lora_loss(s, labels, t, distill_weight=0.5, temperature=2.0, ce_weight=0.05)
    assert ce_again.item() == pytest.approx(hand_ce.item(), rel=1e-5)        # reported unweighted
    assert weighted.item() == pytest.approx(0.05 * hand_ce.item() + 0.5 * hand_kl.item(), rel=1e-5)


def test_distillation_runs_with_teacher(vocab_model, tokenizer):
    rec = LoraRecovery(vocab_model, tokenizer, TEXT, small(max_steps=2, distill_weight=1.0),
                       teacher=vocab_model)
    history = list(rec.train())
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-4)    # student starts as the teacher
    with pytest.raises(ValueError, match="teacher"):
        LoraRecovery(vocab_model, tokenizer, TEXT, small(distill_weight=1.0))


def test_self_generated_data(vocab_model, tokenizer):
    examples = self_generated_examples(vocab_model, tokenizer, ["Say hello.", "Count to three."],
                                       max_new_tokens=8, batch_size=2)
    assert 1 <= len(examples) <= 2
    assert all("Say hello." in e.prompt or "Count to three." in e.prompt for e in examples)
    with pytest.raises(ValueError, match="teacher"):
        recovery_examples("self", tokenizer, 32)


def test_self_generated_answers_stop_at_the_context(vocab_model, tokenizer):
    """Answers get what the context leaves after the batch's longest prompt, and none once a
    prompt fills it (sampling past a model's positions is undefined)."""
    asked = []
    generate = vocab_model.generate

    def recording(**kw):
        asked.append(kw["max_new_tokens"])
        return generate(**kw)

    vocab_model.generate = recording
    prompts = ["Say hello.", "Count to three."]
    width = max(len(tokenizer(_chat_prompt(tokenizer, p), add_special_tokens=False).input_ids)
                for p in prompts)
    vocab_model.config.max_position_embeddings = width + 3
    self_generated_examples(vocab_model, tokenizer, prompts, max_new_tokens=8, batch_size=2)
    assert asked == [3]
    vocab_model.config.max_position_embeddings = width
    assert self_generated_examples(vocab_model, tokenizer, prompts, max_new_tokens=8, batch_size=2) == []
    assert asked == [3]                                     # nothing generated
    vocab_model.config.max_position_embeddings = 4096
    self_generated_examples(vocab_model, tokenizer, prompts, max_new_tokens=8, batch_size=2)
    assert asked == [3, 8]


def test_text_and_instruction_sources(tokenizer, tmp_path):
    text = recovery_examples("builtin", tokenizer, 64)
    assert len(text) > 10 and all(e.prompt == "" for e in text)
    rows = [{"instruction": "Add 2 and 2.", "input": "", "output": "4"},
            {"instruction": "Translate.", "input": "bonjour", "output": "hello"}]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    ex = recovery_examples(str(path), tokenizer, 64)
    assert ex[0].prompt.endswith("### Response:\n") and "### Input:\nbonjour" in ex[1].prompt


def test_a_run_that_would_repeat_the_pool_reads_all_the_examples(tokenizer, tmp_path):
    """Short runs sample their batches from the first EXAMPLE_POOL examples; a run that needs
    more (steps x batch x accumulation) reads the whole text instead of repeating the pool."""
    assert EXAMPLE_POOL == 2000
    assert example_limit(preset("quick")) == EXAMPLE_POOL                   # 48 x 4 = 192 examples
    assert example_limit(preset("quick", max_steps=500)) == EXAMPLE_POOL    # 2,000: the pool once
    assert example_limit(preset("quick", max_steps=501)) is None
    assert example_limit(preset("thorough")) is None                        # 760 x 4 = 3,040
    assert example_limit(preset("llm-pruner")) is None                      # 1,600 x 4 x 16
    path = tmp_path / "book.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    assert len(recovery_examples(str(path), tokenizer, 16, limit=5)) == 5
    everything = recovery_examples(str(path), tokenizer, 16, limit=example_limit(preset("thorough")))
    assert len(everything) > 100


def test_seconds_left_at_the_recent_pace():
    s = LoraSettings(max_steps=20)
    steps = lambda times: [{"step": i + 1, "elapsed": t} for i, t in enumerate(times)]
    assert seconds_left(steps([30.0]), s) is None                 # one step: set-up, no pace yet
    assert seconds_left(steps([30.0, 32.0, 34.0]), s) == 34.0      # 2 s a step x 17 steps
    # the pace of the last 10 steps only: 12 steps, the first slow, then 1 s a step -> 8 steps left
    history = steps([50.0] + [50.0 + i for i in range(1, 12)])
    assert seconds_left(history, s) == pytest.approx(8.0)
    assert seconds_left(history, LoraSettings(max_steps=20, time_budget_s=65.0)) == pytest.approx(4.0)
    assert seconds_left(steps([5.0, 10.0]), LoraSettings(max_steps=2)) == 0.0
    assert progress_text(steps([30.0, 32.0, 34.2]), s) == "34s, about 36s left"
    assert progress_text(steps([3.0]), s) == "3s"
    assert progress_text(steps([5.0, 10.0]), LoraSettings(max_steps=2)) == "10s"   # done


def test_schedule_and_settings():
    s = LoraSettings(learning_rate=1.0, warmup_steps=4, max_steps=10)
    assert [round(lr_at(i, s), 3) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(10, s) == pytest.approx(0.1)
    assert preset("quick").distill_weight == 1.0 and preset("llm-pruner").grad_accum == 16
    assert preset("quick").ce_weight < preset("quick").distill_weight       # KL-led: learn the original
    assert preset("llm-pruner").ce_weight == 1.0 and preset("llm-pruner").distill_weight == 0.0
    assert (preset("quick", r=8).r, preset("quick", r=8).alpha) == (8, 16)    # alpha / r kept
    assert preset("quick", r=8, alpha=8).alpha == 8
    with pytest.raises(ValueError, match="nothing to learn"):
        LoraSettings(ce_weight=0.0, distill_weight=0.0).validate()
    with pytest.raises(ValueError):
        preset("slow")
    with pytest.raises(ValueError):
        LoraSettings(r=0).validate()


@pytest.mark.parametrize("family,temperature", [("llama", 2.0), ("gemma2", 2.0), ("llama", 1.0)])
def test_chunked_loss_backward_matches_the_full_logits_loss(family, temperature):
    """lora_loss_backward (a few positions projected at a time, the logits' gradient taken by hand)
    gives lora_loss's value and autograd's gradients in every trainable weight, with masked labels,
    distillation at either temperature (1 takes a shorter path) and a multiplier."""
    import copy

    from peft import LoraConfig, get_peft_model

    from pruner.recover import lora_loss_backward
    from tests.families import tiny_family_model

    torch.manual_seed(0)
    teacher = tiny_family_model(family).eval()
    student = get_peft_model(copy.deepcopy(teacher), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                                                                 init_lora_weights=False))
    ids = torch.randint(3, 96, (2, 9))
    labels = ids.clone()
    labels[0, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    trainable = [p for p in student.parameters() if p.requires_grad]

    with torch.no_grad():
        t_logits = teacher(input_ids=ids, use_cache=False).logits
    full, ce_full, kl_full = lora_loss(student(input_ids=ids, use_cache=False).logits, labels, t_logits, 0.7, temperature,
                                       ce_weight=0.3)
    (full * 0.5).backward()
    expected = [p.grad.clone() for p in trainable]
    student.zero_grad(set_to_none=True)

    total, ce, kl = lora_loss_backward(student, batch, teacher, 0.7, temperature, multiplier=0.5, chunk=5,
                                       ce_weight=0.3)
    assert total.item() == pytest.approx(full.item(), rel=1e-5)
    assert ce.item() == pytest.approx(ce_full.item(), rel=1e-5)
    # the KL here is ~9e-4, a difference of log-probabilities near 4.5: float32 cancellation leaves
    # ~3e-7 of it to the summation order, which differs between CPUs (AVX2 against AVX-512 kernels)
    assert kl.item() == pytest.approx(kl_full.item(), rel=1e-4, abs=1e-6)
    for p, g in zip(trainable, expected):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4)


def test_a_lora_step_reuses_freed_memory_and_hands_it_back(vocab_model, tokenizer):
    from pruner.resources import ALLOCATOR, return_large_frees_to_os

    if not return_large_frees_to_os():
        pytest.skip("not glibc")
    rec = LoraRecovery(vocab_model, tokenizer, TEXT, small(max_steps=2))
    phases = ALLOCATOR.phases
    rec.train_step()
    assert ALLOCATOR.phases == phases + 1 and ALLOCATOR.reusers == 0


@pytest.mark.parametrize("rank", [1, 8])
def test_adapter_memory_estimate_counts_what_peft_trains(vocab_model, tokenizer, rank):
    """footprint.adapter_bytes: 16 bytes (weight, gradient, two AdamW moments, float32) per LoRA
    parameter peft actually creates at this rank, on every projection of every layer."""
    from pruner import footprint

    rec = LoraRecovery(vocab_model, tokenizer, TEXT, small(r=rank, alpha=2 * rank, max_steps=1))
    assert footprint.adapter_bytes(vocab_model, rank) == 16 * rec.trainable_params
    peak = footprint.recover_peak(vocab_model, 2, 32, False, rank)
    assert peak - footprint.recover_peak(vocab_model, 2, 32, False, 1) == \
        footprint.adapter_bytes(vocab_model, rank) - footprint.adapter_bytes(vocab_model, 1)


def test_autocast_only_where_bfloat16_is_native(monkeypatch):
    from pruner.models import training_autocast_dtype

    cpu = torch.device("cpu")
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert training_autocast_dtype(cpu, torch.float32) is None          # emulated: slower, so off
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert training_autocast_dtype(cpu, torch.float32) == torch.bfloat16
    assert training_autocast_dtype(cpu, torch.bfloat16) is None         # 16-bit weights need none
    assert training_autocast_dtype(torch.device("mps"), torch.float32) is None


def test_mixed_precision_steps_match_float32_and_keep_float32_weights(vocab_model, tokenizer, monkeypatch):
    """A bfloat16-autocast step gives the float32 step's loss to bfloat16 precision; the adapters,
    their gradients and the merged model stay float32; mixed_precision=False turns it off."""
    import pruner.recover as recover

    monkeypatch.setattr(recover, "training_autocast_dtype", lambda device, dtype: torch.bfloat16)
    exact = LoraRecovery(vocab_model, tokenizer, TEXT, small(max_steps=2, mixed_precision=False))
    mixed = LoraRecovery(vocab_model, tokenizer, TEXT, small(max_steps=2))
    assert exact.autocast_dtype is None and mixed.autocast_dtype == torch.bfloat16
    a, b = exact.train_step(), mixed.train_step()
    assert b["loss"] == pytest.approx(a["loss"], rel=2e-2) and b["loss"] != a["loss"]
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())
    assert next(mixed.merge().parameters()).dtype == torch.float32


def test_full_finetuning_trains_every_weight_but_the_embeddings(vocab_model, tokenizer, tmp_path):
    """full_finetune: no adapters; every weight outside the embeddings moves, the embeddings and
    the original do not; the merged model is the trained one; no adapter to save; the memory
    estimate counts a gradient, two AdamW moments and autocast's bfloat16 copy per trained weight."""
    from pruner import footprint

    before = {k: v.clone() for k, v in vocab_model.state_dict().items()}
    settings = small(max_steps=2, full_finetune=True, learning_rate=1e-3)
    rec = LoraRecovery(vocab_model, tokenizer, TEXT, settings)
    list(rec.train())
    assert type(rec.model) is type(vocab_model)                         # no peft wrapper
    trained = dict(rec.model.named_parameters())
    embedding = rec.model.get_input_embeddings().weight
    assert rec.trainable_params == sum(p.numel() for p in rec.model.parameters()) - embedding.numel()
    assert torch.equal(embedding, before["model.embed_tokens.weight"])
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight",
                 "model.norm.weight"):
        assert not torch.equal(trained[name], before[name])
    assert all(torch.equal(before[k], v) for k, v in vocab_model.state_dict().items())
    ids = torch.randint(5, 1000, (2, 12))
    merged = rec.merge()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, rec.model(input_ids=ids).logits)
    assert not any(p.requires_grad for p in merged.parameters())
    assert rec.save_adapter(tmp_path / "adapter") is None and not (tmp_path / "adapter").exists()
    assert footprint.full_finetune_bytes(vocab_model) == 14 * rec.trainable_params
    full = footprint.recover_peak(vocab_model, 2, 32, False, 8, full_finetune=True)
    lora = footprint.recover_peak(vocab_model, 2, 32, False, 8)
    # the same copy, body activations and logits; no adapters and no adapted inputs kept
    shared_lora = lora - footprint.adapter_bytes(vocab_model, 8)
    shared_full = full - footprint.full_finetune_bytes(vocab_model)
    assert 0 < shared_lora - shared_full < 0.5 * lora


def test_full_finetuning_of_bfloat16_weights_steps_float32_masters(vocab_model, tokenizer):
    """A bfloat16 model (as a GPU loads it) trains through float32 master copies: at lr 1e-5,
    AdamW's step lies below half a bfloat16 spacing of most weights, so stepping the weights
    themselves would lose it; the masters move by about lr a step, each weight is its
    master's rounding, and the estimate counts 18 bytes per trained weight (float32 weights keep
    none: no copy)."""
    from pruner import footprint

    model = vocab_model.to(torch.bfloat16)
    before = {n: p.detach().float() for n, p in model.named_parameters()}
    lr, steps = 1e-5, 3
    rec = LoraRecovery(model, tokenizer, TEXT, small(max_steps=steps, full_finetune=True, learning_rate=lr))
    assert len(rec.masters.pairs) == len(list(p for p in rec.model.parameters() if p.requires_grad))
    list(rec.train())
    names = {id(p): n for n, p in rec.model.named_parameters()}
    for weight, master in rec.masters.pairs:
        assert master.dtype == torch.float32 and weight.dtype == torch.bfloat16
        assert torch.equal(weight, master.to(torch.bfloat16))
        moved = (master - before[names[id(weight)]]).abs()
        if weight.dim() == 2:                                   # AdamW: about lr per step, in float32
            assert 0.5 * lr < moved.median() < steps * lr * 1.5
            half_spacing = torch.ldexp(torch.ones_like(moved), torch.frexp(before[names[id(weight)]])[1] - 9)
            assert (moved / steps < half_spacing).float().mean() > 0.5    # a step lost on the weight
    assert footprint.full_finetune_bytes(model) == 18 * rec.trainable_params
    assert LoraRecovery(model.float(), tokenizer, TEXT, small(full_finetune=True)).masters.pairs == []


def test_full_finetuning_refuses_float16_weights(vocab_model, tokenizer):
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        LoraRecovery(vocab_model.half(), tokenizer, TEXT, small(full_finetune=True))


def test_adamw_is_fused_on_cpu_and_steps_like_the_default(monkeypatch):
    """recover.adamw: torch's fused AdamW where the device has it (this CPU does), the same
    updates as the default implementation to float32 rounding, and the default where fused
    construction is refused."""
    from pruner.recover import adamw

    torch.manual_seed(0)
    start = torch.randn(5, 7)
    grads = [torch.randn(5, 7) for _ in range(4)]
    weights = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    fused, plain = adamw([weights[0]], 1e-2, 0.01), torch.optim.AdamW([weights[1]], lr=1e-2, weight_decay=0.01)
    assert fused.defaults["fused"] is True
    for g in grads:
        for w, opt in zip(weights, (fused, plain)):
            w.grad = g.clone()
            opt.step()
    assert torch.allclose(weights[0], weights[1], atol=1e-6) and not torch.equal(weights[0], start)

    class NoFused(torch.optim.AdamW):
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("fused=True requires ...")
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", NoFused)
    assert not adamw([torch.nn.Parameter(start.clone())], 1e-2, 0.0).defaults.get("fused")


def test_chunked_loss_trains_an_untied_head_under_bfloat16_autocast():
    """Full fine-tuning of an untied model trains its output head: under autocast the head is cast
    in the graph once per batch and every chunk back-propagates through that one cast; the loss
    matches the full-logits reference exactly and the gradients to bfloat16 rounding."""
    import copy

    from pruner.recover import lora_loss_backward
    from tests.families import tiny_family_model

    torch.manual_seed(0)
    teacher = tiny_family_model("llama").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    student.lm_head.weight = torch.nn.Parameter(student.lm_head.weight.detach().clone())    # untied
    for p in student.parameters():
        p.requires_grad_(True)
    ids = torch.randint(3, 96, (2, 9))
    labels = ids.clone()
    labels[0, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    params = list(student.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, use_cache=False).logits
        full, _, _ = lora_loss(student(input_ids=ids, use_cache=False).logits, labels, t_logits, 0.7, ce_weight=0.3)
    full.backward()
    expected = [p.grad.clone() for p in params]
    student.zero_grad(set_to_none=True)
    casts = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _, _ = lora_loss_backward(student, batch, teacher, 0.7, chunk=5, ce_weight=0.3, head_casts=casts)
    assert total.item() == pytest.approx(full.item(), rel=1e-5)
    assert student.lm_head.weight.grad is not None and list(casts) == [teacher.lm_head]   # only the frozen head kept
    for p, g in zip(params, expected):
        assert (p.grad - g).norm() <= 0.02 * g.norm() + 1e-8
