"""Self-generated calibration text kept on disk (pruner.text_cache): read back instead of sampled
again, keyed by the model and the settings, bounded, and never in the way when the disk is not."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from pruner import data, text_cache


def never_sample(*args, **kwargs):
    raise AssertionError("sampled again: the kept text should have been read")


def settings(seed=1):
    return data.self_text_settings(8, 20, seed)


def test_a_text_is_sampled_once_then_read_back(vocab_model, tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv(text_cache.CACHE_ENV, str(tmp_path))
    first = data.calibration_ids(tokenizer, "self", 4, 16, seed=1, model=vocab_model)
    kept = list((tmp_path / "self-text").glob("*.txt"))
    assert len(kept) == 1
    assert kept[0].read_bytes().decode() == data.self_generated_text(vocab_model, tokenizer, 8, 20, 1)
    monkeypatch.setattr(data, "self_generated_text", never_sample)
    assert torch.equal(data.calibration_ids(tokenizer, "self", 4, 16, seed=1, model=vocab_model), first)


def test_a_text_reads_back_as_written_carriage_returns_and_all(monkeypatch, tmp_path):
    # plain sampling writes a lone "\r" now and then; a text-mode read would turn it (and "\r\n")
    # into "\n", and the calibration windows would differ from the sampled text's
    monkeypatch.setenv(text_cache.CACHE_ENV, str(tmp_path))
    text = "one\rtwo\r\nthree\n\nfour \u00e9\u4e2d\r"
    path = text_cache.write("k" * 32, text)
    assert path.read_bytes() == text.encode()
    assert text_cache.read("k" * 32) == text


def test_the_key_names_the_model_the_settings_and_the_device(vocab_model, tokenizer):
    key = text_cache.text_key(vocab_model, tokenizer, settings())
    assert key == text_cache.text_key(vocab_model, tokenizer, settings())
    assert key != text_cache.text_key(vocab_model, tokenizer, settings(seed=2))
    assert key != text_cache.text_key(vocab_model, tokenizer, data.self_text_settings(8, 21, 1))
    other = tiny_model(seed=1, vocab=len(tokenizer), n_heads=4, n_kv=2, layers=2)         # other weights
    assert key != text_cache.text_key(other, tokenizer, settings())
    with torch.no_grad():
        vocab_model.model.layers[1].mlp.down_proj.weight.mul_(1.01)                       # fine-tuned a little
    assert key != text_cache.text_key(vocab_model, tokenizer, settings())
    assert text_cache.text_key(vocab_model.to(torch.bfloat16), tokenizer, settings()) not in (key, None)


def test_an_offloaded_model_is_not_fingerprinted(tokenizer):
    model = tiny_model(vocab=len(tokenizer), layers=2)
    model.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(torch.empty(48, 32, device="meta"))
    assert text_cache.model_fingerprint(model) is None and text_cache.text_key(model, tokenizer, settings()) is None
    assert text_cache.read(None) is None and text_cache.write(None, "text") is None


def test_turned_off_nothing_is_kept(vocab_model, tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv(text_cache.CACHE_ENV, "off")
    assert text_cache.cache_dir() is None
    calls = []
    real = data.self_generated_text
    monkeypatch.setattr(data, "self_generated_text", lambda *a: calls.append(a) or real(*a))
    data.kept_self_text(vocab_model, tokenizer, 8, 20, 1)
    data.kept_self_text(vocab_model, tokenizer, 8, 20, 1)
    assert len(calls) == 2


def test_the_default_folder_follows_xdg():
    assert text_cache.cache_dir({"XDG_CACHE_HOME": "/x"}) == text_cache.Path("/x/pruning-studio/self-text")
    assert text_cache.cache_dir({"PRUNER_CACHE_DIR": "/y", "XDG_CACHE_HOME": "/x"}) == text_cache.Path("/y/self-text")
    assert text_cache.cache_dir({}) == text_cache.Path.home() / ".cache" / "pruning-studio" / "self-text"


def test_a_folder_that_cannot_be_written_costs_only_the_sampling(vocab_model, tokenizer, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(text_cache.CACHE_ENV, str(blocker))
    text = data.kept_self_text(vocab_model, tokenizer, 8, 20, 1)
    assert text == data.self_generated_text(vocab_model, tokenizer, 8, 20, 1)
    assert text_cache.write("k", "text") is None


def test_the_least_recently_read_texts_go_first(monkeypatch, tmp_path):
    import os

    monkeypatch.setenv(text_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(text_cache, "MAX_CACHE_BYTES", 350)
    for i, key in enumerate("abc"):
        text_cache.write(key, key * 100)                               # 100 bytes each
        path = tmp_path / "self-text" / f"{key}.txt"
        os.utime(path, (1000 + i, 1000 + i))                           # written in this order
    assert text_cache.read("a") == "a" * 100                          # read last: now the newest
    text_cache.write("d", "d" * 100)
    kept = sorted(p.stem for p in (tmp_path / "self-text").glob("*.txt"))
    assert kept == ["a", "c", "d"]                                     # b was read least recently
    assert not list((tmp_path / "self-text").glob("*.part"))
    text_cache.write("e", "e" * 400)                                   # over the bound alone: kept anyway
    assert text_cache.read("e") == "e" * 400


@pytest.mark.slow
def test_the_shipped_text_is_what_the_default_model_writes(default_model, monkeypatch):
    """The shipped file is read for the default calibration (nothing sampled), and it is byte for
    byte what sampling afresh gives on this CPU."""
    model, tokenizer = default_model
    n_docs, length = data.self_documents(data.CALIBRATION_SAMPLES, data.CALIBRATION_LEN, model)
    key = text_cache.text_key(model, tokenizer, data.self_text_settings(n_docs, length, 0))
    shipped = text_cache.SHIPPED / f"{key}.txt"
    assert shipped.is_file(), "remake it: python -m pruner.text_cache"
    real = data.self_generated_text
    monkeypatch.setattr(data, "self_generated_text", never_sample)
    ids = data.calibration_ids(tokenizer, "self", data.CALIBRATION_SAMPLES, data.CALIBRATION_LEN, 0, model=model)
    assert ids.shape == (data.CALIBRATION_SAMPLES, data.CALIBRATION_LEN)
    assert real(model, tokenizer, n_docs, length, 0) == shipped.read_bytes().decode()
