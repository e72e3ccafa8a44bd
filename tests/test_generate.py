"""Streaming generation with fixed settings; bad input is a clear error."""

import pytest

from pruner.generate import (MAX_NEW_TOKENS_LIMIT, MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS, GenerationSettings,
                             encode_prompt, generate_text, prompt_ids, stream)


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


def test_prompt_and_new_tokens_fit_the_context(vocab_model, tokenizer):
    """Positions past the model's context are undefined: a clear message, before generating."""
    plain = GenerationSettings(max_new_tokens=3, chat_template=False)
    n = encode_prompt(tokenizer, "Hello there", False).shape[1]
    vocab_model.config.max_position_embeddings = n + 2
    with pytest.raises(ValueError, match=f"context of {n + 2} positions.*at most 2 new tokens"):
        generate_text(vocab_model, tokenizer, "Hello there", plain)
    plain.max_new_tokens = 2
    assert generate_text(vocab_model, tokenizer, "Hello there", plain)["tokens"] == 2


def test_overlong_prompts_are_refused(vocab_model, tokenizer):
    words = " ".join(["word"] * (MAX_PROMPT_TOKENS + 10))               # one token each, and a few more
    assert len(words) < MAX_PROMPT_CHARS
    with pytest.raises(ValueError, match=f"at most {MAX_PROMPT_TOKENS} are read"):
        generate_text(vocab_model, tokenizer, words)
    with pytest.raises(ValueError, match="characters"):                  # refused before tokenizing
        prompt_ids(vocab_model, None, "x" * (MAX_PROMPT_CHARS + 1), GenerationSettings())
