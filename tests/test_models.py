"""Loading: the offline default, local folders, clear errors for everything else."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pruner.models import (ModelLoadError, UnsupportedModelError, check_supported, describe_model,
                           load_model, pick_device, pick_dtype)

from conftest import tiny_model


@pytest.mark.slow
def test_default_model_is_a_plain_float32_smollm2(default_model, tmp_path):
    model, tokenizer = default_model
    info = describe_model(model)
    assert (info["layers"], info["heads"], info["kv_heads"], info["head_dim"]) == (30, 9, 3, 64)
    assert (info["hidden_size"], info["intermediate_size"]) == (576, 1536)
    assert info["params"] == 134_515_008 and info["tied_embeddings"]
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path)            # a GGUF-loaded model would refuse this
    assert (tmp_path / "model.safetensors").is_file()
    assert tokenizer.pad_token is not None


def test_local_folder_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="could not load folder"):
        load_model(str(tmp_path), device="cpu")        # no tokenizer saved: a clear error
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, "[UNK]")),
                                  eos_token="a")
    tok.save_pretrained(tmp_path)
    loaded, _ = load_model(str(tmp_path), device="cpu")
    ids = torch.tensor([[3, 4, 5]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_unsupported_architecture_is_named(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="supported families: .*llama, mistral"):
        check_supported(gpt2)


@pytest.mark.parametrize("source, match", [
    ("./no/such/folder", "does not exist"),
    ("nobody-xyz/definitely-not-a-model", "nobody-xyz/definitely-not-a-model"),
    ("", "no model source"),
])
def test_bad_sources_are_clear(source, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(source, device="cpu")


def test_device_and_dtype_defaults():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto").type in ("cpu", "mps")
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        pick_dtype(torch.device("cpu"), "float8")


@pytest.mark.parametrize("family", ["llama", "gemma2", "granite", "phi3"])
def test_head_logits_match_the_family_forward(family):
    """The body + head_logits path (chunked losses use it) gives the model's own logits,
    soft-capping (Gemma 2) and logits_scaling (Granite) included."""
    from pruner.models import decoder_body, head_logits
    from tests.families import tiny_family_model

    model = tiny_family_model(family).eval()
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        hidden = decoder_body(model)(input_ids=ids, use_cache=False).last_hidden_state
        assert torch.allclose(head_logits(model, hidden), full, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma2", "granite"])
def test_head_projection_casts_the_head_once_and_gives_autocasts_logits(family, monkeypatch):
    """head_projection under bfloat16 autocast: bit for bit the logits (and the hidden states'
    gradient) of head_logits under the same autocast, with the output weight cast once for every
    call instead of once a call; outside autocast it is head_logits."""
    from pruner.models import head_logits, head_projection
    from tests.families import tiny_family_model

    model = tiny_family_model(family).eval()
    hidden = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
        expected = head_logits(model, a)
        project = head_projection(model)
        casts = []
        monkeypatch.setattr(torch.Tensor, "to", lambda self, *args, _to=torch.Tensor.to, **kw:
                            casts.append(self.shape) or _to(self, *args, **kw))
        got = [project(b[:1]), project(b[1:])]
        monkeypatch.undo()
    assert not [shape for shape in casts if shape == model.get_output_embeddings().weight.shape]
    assert torch.equal(torch.cat(got), expected) and expected.dtype == torch.bfloat16
    expected.float().square().sum().backward()
    torch.cat(got).float().square().sum().backward()
    assert torch.equal(a.grad, b.grad)
    assert torch.equal(head_projection(model)(hidden), head_logits(model, hidden))
    casts = {}                 # a run's casts: kept where the cast joins no graph, re-made where it does
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head_projection(model, casts)
        assert not casts                                    # the weight requires grad: in the graph
        with torch.no_grad():
            head_projection(model, casts)                   # the teacher's way
        kept = casts[model.get_output_embeddings()][1][0]
        with torch.no_grad():
            head_projection(model, casts)
        assert casts[model.get_output_embeddings()][1][0] is kept
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(2)    # changed in place: cast afresh
            head_projection(model, casts)
        assert casts[model.get_output_embeddings()][1][0] is not kept
