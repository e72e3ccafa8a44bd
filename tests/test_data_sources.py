"""Where evaluation data comes from: a data folder, the hub (asked once), or the slices shipped in
the package, and that a slice gives the same numbers as the full set over its leading part."""

import time

import pytest
import torch

from pruner import data, hub
from pruner.data import SLICES, find_lambada, find_text
from pruner.evaluate import multiple_choice, perplexity
from pruner.tasks import find_task

DEFAULT_TASKS = ("piqa", "arc_easy", "arc_challenge", "boolq", "winogrande", "openbookqa", "copa")


def test_an_empty_folder_falls_back_to_the_shipped_slices(tmp_path):
    rows, origin = find_text("wikitext2", tmp_path)
    assert origin == "shipped slice (first 300 lines)"
    assert rows[0] == "" and rows[1] == " = Robert Boulter = \n"      # datasets' row layout
    for task in DEFAULT_TASKS:
        docs, origin = find_task(task, tmp_path, limit=50)
        assert len(docs) == 50 and origin.startswith("shipped slice"), task
        assert all(0 <= d.gold < len(d.continuations) for d in docs)
    passages, origin = find_lambada(tmp_path)
    assert len(passages) == 600 and origin == "shipped slice (first 600 passages)"


def test_a_data_folder_comes_first(data_dir):
    rows, origin = find_text("wikitext2", data_dir)
    assert len(rows) == 4358 and origin == f"data folder {data_dir}"
    assert find_task("piqa", data_dir, limit=3)[1] == f"data folder {data_dir}"


def test_the_slices_are_the_leading_part_of_the_full_sets(data_dir):
    full, _ = find_text("wikitext2", data_dir)
    part, _ = find_text("wikitext2", SLICES)
    assert full[:len(part)] == part
    for task in DEFAULT_TASKS:
        assert find_task(task, SLICES)[0] == find_task(task, data_dir, limit=len(find_task(task, SLICES)[0]))[0]
    assert find_lambada(data_dir)[0][:600] == find_lambada(SLICES)[0]


def test_quick_perplexity_on_the_slice_equals_the_full_corpus(vocab_model, tokenizer, data_dir, tmp_path):
    """The quick figure (first 32 windows of 128 tokens) is the same number from either source."""
    on_full = perplexity(vocab_model, tokenizer, "wikitext2", max_windows=32, data_dir_path=data_dir,
                         progress=False)
    on_slice = perplexity(vocab_model, tokenizer, "wikitext2", max_windows=32, data_dir_path=tmp_path,
                          progress=False)        # an empty folder: the shipped slice
    assert on_slice["windows"] == on_full["windows"] == 32
    assert on_slice["ppl"] == pytest.approx(on_full["ppl"], rel=1e-6)
    assert on_slice["data"].startswith("shipped slice") and on_full["data"].startswith("data folder")


def test_a_slice_reports_how_much_it_holds(vocab_model, tokenizer, tmp_path):
    res = perplexity(vocab_model, tokenizer, "wikitext2", max_windows=10_000, data_dir_path=tmp_path,
                     progress=False)
    assert 100 < res["windows"] < 10_000 and res["data"].startswith("shipped slice")
    mc = multiple_choice(vocab_model, tokenizer, "arc_easy", limit=1000, data_dir_path=tmp_path,
                         progress=False)
    assert mc["n"] == 200 and mc["data"] == "shipped slice (first 200 items)"


def test_offline_is_detected_once_and_remembered(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls = []

    def probe(timeout):
        calls.append(timeout)
        return False, "gaierror: no network"

    monkeypatch.setattr(hub, "_probe", probe)
    hub.forget()
    try:
        assert "unreachable" in hub.offline_reason()
        for _ in range(5):
            assert not hub.online(datasets=True)
        assert len(calls) == 1 and calls[0] <= 3
        with pytest.raises(hub.HubUnavailableError, match="gaierror"):
            hub.require("loading 'x/y'")
    finally:
        hub.forget()


def test_the_offline_variable_answers_without_asking(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "_probe", lambda timeout: pytest.fail("probed although HF_HUB_OFFLINE=1"))
    assert hub.offline_reason() == "HF_HUB_OFFLINE is set"


def test_the_real_probe_fails_within_its_bound(monkeypatch):
    """With no route to the hub (this machine, CI) the probe answers within ~3 s, DNS included."""
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.monotonic()
    ok, why = hub._probe(hub.PROBE_TIMEOUT_S)
    assert not ok and why and time.monotonic() - start < 3.5


def test_data_folder_order(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNER_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path
    assert str(data.data_dir("/elsewhere")) == "/elsewhere"
    monkeypatch.delenv("PRUNER_DATA_DIR")
    expected = data.BESIDE_CHECKOUT if data.BESIDE_CHECKOUT.is_dir() else None
    assert data.data_dir() == expected


def test_self_generated_calibration_is_seeded_and_leaves_the_global_rng_alone(vocab_model, tokenizer):
    from pruner.data import calibration_ids, self_generated_text

    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = calibration_ids(tokenizer, "self", 4, 16, seed=1, model=vocab_model)
    assert torch.equal(torch.rand(3), before)                  # sampling ran on a forked generator
    b = calibration_ids(tokenizer, "self", 4, 16, seed=1, model=vocab_model)
    c = calibration_ids(tokenizer, "self", 4, 16, seed=2, model=vocab_model)
    assert a.shape == (4, 16) and torch.equal(a, b) and not torch.equal(a, c)
    # the windows come from the model's own text: 2 x 4 documents of up to 1.25 x 16 tokens
    text = self_generated_text(vocab_model, tokenizer, 8, 20, seed=1)
    pool = tokenizer(text, add_special_tokens=False).input_ids
    windows = {tuple(pool[i: i + 16]) for i in range(len(pool) - 15)}
    assert all(tuple(row) in windows for row in a.tolist())
    with pytest.raises(ValueError, match="needs the model"):
        calibration_ids(tokenizer, "self", 4, 16)


def test_self_generated_text_is_written_in_one_reuse_phase(vocab_model, tokenizer):
    """Sampling reuses freed memory (each step's logits and cache: 39 s instead of 54 s for the
    default model's 64 documents in a server's bounded allocator), in one phase whose heap goes back
    at once (scoring follows in the same admitted step, bounded)."""
    from pruner.data import self_generated_text
    from pruner.resources import ALLOCATOR, return_large_frees_to_os

    if not return_large_frees_to_os():
        pytest.skip("not glibc")
    before = ALLOCATOR.phases
    text = self_generated_text(vocab_model, tokenizer, 4, 12, seed=3)
    assert ALLOCATOR.phases - before == 1 and text
    assert ALLOCATOR.pending_trim is None and ALLOCATOR.reusers == 0      # trimmed on leaving


def test_self_generated_documents_stay_within_the_model_context(vocab_model, tokenizer, monkeypatch):
    from pruner import data

    assert data.self_document_length(128) == 160                       # 1.25 windows
    context = vocab_model.config.max_position_embeddings               # 128 in the tiny model
    assert data.self_document_length(128, vocab_model) == context - 1   # the start token + 127
    assert data.self_document_length(16, vocab_model) == 20
    asked, real = [], data.self_generated_text

    def recording(model, tok, n_docs, length, seed):
        asked.append(length)
        return real(model, tok, n_docs, length, seed)

    monkeypatch.setattr(data, "self_generated_text", recording)
    ids = data.calibration_ids(tokenizer, "self", 2, 128, seed=0, model=vocab_model)
    assert asked == [context - 1] and ids.shape == (2, 128)


def test_writing_self_calibration_is_counted_in_the_admitted_peak():
    from pruner import footprint

    from conftest import tiny_model

    model = tiny_model(layers=3, hidden=32, n_heads=4, n_kv=2, head_dim=8, inter=48, vocab=96)
    # 2 x 4 documents in one batch, 1 + 20 positions, keys and values of 2 KV heads x 8 dims in 3
    # layers (float32), x1.6 for the reuse phase's holes; a step's logits x 4; a forward over 8
    # tokens (no logits)
    cache = 1.6 * 2 * 3 * 8 * 21 * (2 * 8) * 4
    assert footprint.self_calibration_peak(model, 4, 16) == int(cache + 8 * 96 * 4 * 4 + 8 * (8 * 32 + 4 * 48) * 4)
    assert footprint.calibration_peak(model, "self", 4, 16) == footprint.self_calibration_peak(model, 4, 16)
    assert footprint.calibration_peak(model, "builtin", 4, 16) == 0


def test_continued_calibration_keeps_the_text_and_appends_the_models_own_tokens(vocab_model, tokenizer):
    from pruner.data import calibration_ids, continued_ids

    plain = calibration_ids(tokenizer, "builtin", 4, 16, seed=1)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = calibration_ids(tokenizer, "builtin", 4, 16, seed=1, model=vocab_model, continuation=8)
    assert torch.equal(torch.rand(3), before)                  # sampling ran on a forked generator
    assert a.shape == (4, 24) and torch.equal(a[:, :16], plain)  # the given text stays as the prefix
    assert torch.equal(a, calibration_ids(tokenizer, "builtin", 4, 16, seed=1, model=vocab_model, continuation=8))
    # what the model samples after each window with the seed (plain sampling), end-of-text held off
    torch.manual_seed(1)
    expected = vocab_model.generate(input_ids=plain, attention_mask=torch.ones_like(plain), do_sample=True,
                                    temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8, min_new_tokens=8,
                                    pad_token_id=0)
    assert torch.equal(a, expected)
    assert tokenizer.eos_token_id not in a[:, 16:].tolist()
    assert torch.equal(continued_ids(vocab_model, plain, 0), plain)
    # self text is the model's own already: not continued; other text needs the model
    self_ids = calibration_ids(tokenizer, "self", 4, 16, seed=1, model=vocab_model)
    assert torch.equal(calibration_ids(tokenizer, "self", 4, 16, seed=1, model=vocab_model, continuation=8), self_ids)
    with pytest.raises(ValueError, match="needs the model"):
        calibration_ids(tokenizer, "builtin", 4, 16, continuation=8)


def test_continued_windows_stop_at_the_models_context(vocab_model, tokenizer):
    from pruner.data import CONTINUATION_TOKENS, CalibrationSpec, calibration_ids

    context = vocab_model.config.max_position_embeddings               # 128 in the tiny model
    ids = calibration_ids(tokenizer, "builtin", 2, 120, seed=0, model=vocab_model, continuation=20)
    assert ids.shape == (2, context)
    spec = CalibrationSpec("builtin", 2, 16)
    assert spec.continuation == CONTINUATION_TOKENS == 192               # the default: continued
    assert spec.window_tokens(vocab_model) == context and spec.window_tokens() == 16 + 192
    assert spec.ids(tokenizer, model=vocab_model).shape == (2, context)
    assert CalibrationSpec("self", 2, 16).window_tokens(vocab_model) == 16
    assert CalibrationSpec("builtin", 2, 16, continuation=0).window_tokens(vocab_model) == 16


def test_continuing_calibration_is_counted_in_the_admitted_peak():
    from pruner import footprint

    from conftest import tiny_model

    model = tiny_model(layers=3, hidden=32, n_heads=4, n_kv=2, head_dim=8, inter=48, vocab=96)
    # 4 windows in one batch, 16 + 8 positions, keys and values of 2 KV heads x 8 dims in 3 layers
    # (float32), x1.6 for the reuse phase's holes; a step's logits x 4; a forward over 4 tokens
    cache = 1.6 * 2 * 3 * 4 * 24 * (2 * 8) * 4
    assert footprint.calibration_peak(model, "builtin", 4, 16, continuation=8) == \
        int(cache + 4 * 96 * 4 * 4 + 4 * (8 * 32 + 4 * 48) * 4)
    assert footprint.calibration_peak(model, "self", 4, 16, continuation=8) == \
        footprint.self_calibration_peak(model, 4, 16)
