"""Self-generated calibration text kept on disk: what a model once wrote for a seed is read back
instead of being sampled again.

Writing the default calibration (64 documents of up to 160 tokens, `data.self_generated_text`)
is the longest part of scoring on a CPU: about 58 s for the default model on 2 cores, every
time a CLI run, a fresh server or a server restarted mid-lesson scores. Sampling is seeded on a
forked generator, so the same model, settings and seed write the same text; this module keeps it.

- **Key** (`text_key`): a fingerprint of the model (every tensor's name, shape and dtype, and an
  evenly strided sample of its values: any fine-tuned, pruned or other checkpoint differs), its
  generation config, the tokenizer's size and start / end tokens, the device type (a GPU's sampler
  draws other random numbers), and the writing's settings (documents, length, seed, batch,
  sampling parameters). A model whose weights are not all materialized (offloaded to disk) gets
  no key and is sampled every time.
- **Shipped** (`SHIPPED`): the default model's text for the default calibration and seed 0 on a
  CPU, as it writes it (checked against a fresh sampling in tests/test_text_cache.py; remake it
  with `python -m pruner.text_cache`). A fresh offline clone scores the default lesson without
  writing it.
- **Written**: any other text goes to `$PRUNER_CACHE_DIR`, else `$XDG_CACHE_HOME/pruning-studio`,
  else `~/.cache/pruning-studio` (`self-text/<key>.txt`), at most `MAX_CACHE_BYTES` in all (oldest
  read first out). `PRUNER_CACHE_DIR=off` turns reading and writing it off (the shipped text
  stays). A folder that cannot be written is skipped: the text is then sampled every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

SHIPPED = Path(__file__).resolve().parent / "assets" / "self_text"
CACHE_ENV = "PRUNER_CACHE_DIR"
MAX_CACHE_BYTES = 64 * 2**20            # a 32 x 128 default calibration is about 36 kB of text
SAMPLED_VALUES = 1024                   # values per tensor in the fingerprint


def cache_dir(env: dict | None = None) -> Path | None:
    """Where written texts go, or None when turned off (`PRUNER_CACHE_DIR=off`)."""
    env = os.environ if env is None else env
    explicit = env.get(CACHE_ENV, "").strip()
    if explicit.lower() in ("off", "0", "none", "false"):
        return None
    if explicit:
        return Path(explicit) / "self-text"
    base = env.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "pruning-studio" / "self-text"


def model_fingerprint(model) -> str | None:
    """sha256 of every tensor's name, shape, dtype and SAMPLED_VALUES evenly strided values; None
    when a tensor is not materialized (meta: offloaded weights)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_meta:
                return None
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLED_VALUES)
            sample = flat[::step][:SAMPLED_VALUES].to("cpu", torch.float64)           # (<= SAMPLED_VALUES,)
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(sample.numpy().tobytes())
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        settings = {k: v for k, v in generation.to_dict().items()
                    if k not in ("transformers_version", "_from_model_config")}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def text_key(model, tokenizer, settings: dict) -> str | None:
    """The name a model's text for these writing `settings` is kept under; None when the model
    cannot be fingerprinted."""
    fingerprint = model_fingerprint(model)
    if fingerprint is None:
        return None
    device = next(model.parameters()).device.type
    identity = {"model": fingerprint, "device": device, "vocabulary": len(tokenizer),
                "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, **settings}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


def read(key: str | None, env: dict | None = None) -> str | None:
    """The text kept under `key`: shipped first, then written; None when neither has it."""
    if key is None:
        return None
    folder = cache_dir(env)
    for path in [SHIPPED / f"{key}.txt"] + ([folder / f"{key}.txt"] if folder else []):
        try:
            with path.open(encoding="utf-8", newline="") as file:   # as written: "\r" stays "\r"
                text = file.read()
        except OSError:
            continue
        if path.parent != SHIPPED:
            try:
                os.utime(path)                   # read last = evicted last
            except OSError:
                pass
        return text
    return None


def write(key: str | None, text: str, env: dict | None = None) -> Path | None:
    """Keep `text` under `key` (atomically), then drop the least recently read texts past
    MAX_CACHE_BYTES; None (and nothing raised) where the folder cannot be written."""
    folder = cache_dir(env)
    if key is None or folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", dir=folder, suffix=".part",
                                         delete=False) as part:
            part.write(text)
        path = folder / f"{key}.txt"
        os.replace(part.name, path)
        _evict(folder, keep=path)
        return path
    except OSError:
        return None


def _evict(folder: Path, keep: Path) -> None:
    files = sorted(folder.glob("*.txt"), key=lambda p: p.stat().st_mtime, reverse=True)   # newest first
    total = 0
    for path in files:
        total += path.stat().st_size
        if total > MAX_CACHE_BYTES and path != keep:
            path.unlink(missing_ok=True)


def _write_shipped() -> Path:
    """(Re)write the default model's shipped text for the default calibration, sampled afresh."""
    from .data import (
        CALIBRATION_LEN,
        CALIBRATION_SAMPLES,
        self_documents,
        self_generated_text,
        self_text_settings,
    )
    from .models import load_model

    model, tokenizer = load_model("default", device="cpu")
    n_docs, length = self_documents(CALIBRATION_SAMPLES, CALIBRATION_LEN, model)
    key = text_key(model, tokenizer, self_text_settings(n_docs, length, 0))
    SHIPPED.mkdir(parents=True, exist_ok=True)
    path = SHIPPED / f"{key}.txt"
    path.write_text(self_generated_text(model, tokenizer, n_docs, length, 0), encoding="utf-8", newline="")
    return path


if __name__ == "__main__":
    print(_write_shipped())
