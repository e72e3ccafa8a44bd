"""Streaming generation with fixed settings; bad input is a clear error."""

import pytest

from pruner.generate import MAX_NEW_TOKENS_LIMIT, GenerationSettings, encode_prompt, generate_text, stream


def test_stream_grows_and_ends(vocab_model, tokenizer):
    items = list(stream(vocab_model, tokenizer, "Hello", GenerationSettings(max_new_tokens=6)))
    assert items[-1]["done"] and items[-1]["tokens"] == 6
    texts = [i["text"] for i in items]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))


def test_greedy_and_seeded_sampling_are_repeatable(vocab_model, tokenizer):
    greedy = GenerationSettings(max_new_tokens=5)
    assert generate_text(vocab_model, tokenizer, "Hi", greedy)["text"] == \
        generate_text(vocab_model, tokenizer, "Hi", greedy)["text"]
    sampled = GenerationSettings(max_new_tokens=5, do_sample=True, seed=3)
    assert generate_text(vocab_model, tokenizer, "Hi", sampled)["text"] == \
        generate_text(vocab_model, tokenizer, "Hi", sampled)["text"]


def test_chat_template_is_switchable(tokenizer):
    chat = encode_prompt(tokenizer, "Hi", None)
    plain = encode_prompt(tokenizer, "Hi", False)
    assert chat.shape[1] > plain.shape[1]


@pytest.mark.parametrize("prompt", ["", "   ", None])
def test_empty_prompt(vocab_model, tokenizer, prompt):
    with pytest.raises(ValueError, match="empty"):
        generate_text(vocab_model, tokenizer, prompt)


def test_too_many_tokens(vocab_model, tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_text(vocab_model, tokenizer, "Hi", GenerationSettings(max_new_tokens=MAX_NEW_TOKENS_LIMIT + 1))
