"""Calibration and evaluation text: a local data folder, the hub through `datasets`, the slices
shipped in the package (pruner/assets/data/), or the project's own built-in calibration text.

Where each set comes from, in order:
1. a data folder: `data_dir=` / `--data-dir`, else $PRUNER_DATA_DIR, else `../shared/data` beside
   the checkout where it exists. Layout (the shared evaluation data): `wikitext-2-raw.wiki.test.raw`,
   `ptb.valid.txt`, `piqa/`, `llm-foundry-icl/*.jsonl`, ...;
2. the hub, unless it is known to be unreachable (`pruner.hub`: asked once, remembered);
3. the shipped slices: the first rows / items of the sets the dashboard's default lesson uses,
   in the same layout (their sources and licenses: pruner/assets/data/README.md).
Every loader also says which one it used (`origin`), and the page and CLI show it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import hub, text_cache
from .models import context_length
from .options import Range, check, option
from .resources import reusing_freed_memory

ASSETS = Path(__file__).resolve().parent / "assets"
BUILTIN_CALIBRATION = ASSETS / "calibration.txt"
SLICES = ASSETS / "data"
DATA_DIR_ENV = "PRUNER_DATA_DIR"
BESIDE_CHECKOUT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

# name -> (local file, hub (path, config, split, text field))
TEXT_CORPORA = {
    "wikitext2": ("wikitext-2-raw.wiki.test.raw", ("wikitext", "wikitext-2-raw-v1", "test", "text")),
    "ptb": ("ptb.valid.txt", ("ptb_text_only", "penn_treebank", "validation", "sentence")),
}
LAMBADA_FILE = "llm-foundry-icl/lambada_openai.jsonl"
SELF_SOURCE = "self"          # calibration text the model samples itself (`self_generated_text`)
SELF_BATCH = 64               # documents sampled at once (the seed's text depends on it: fixed)
# plain sampling from the model's own distribution, nothing cut off (top_k 0 and top_p 1 turn the
# filters off): on such text the sampled tokens' loss has an expected gradient of zero, so the
# squared first-order Taylor score estimates the Fisher information's diagonal (README, "Calibration
# text"); top-p 0.95 / top-k 50, the default until 2026-12-05, measured 2.07x dense against 1.89x
# (the default recipe at 20%, six draws; bench/default_lever.py --self-sampling)
SELF_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}


class DataUnavailableError(RuntimeError):
    """A dataset could not be found locally, on the hub or built in; the message says how."""


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local data folder: the explicit one, else $PRUNER_DATA_DIR, else ../shared/data beside
    the checkout where it exists, else None."""
    chosen = explicit or os.environ.get(DATA_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return BESIDE_CHECKOUT if BESIDE_CHECKOUT.is_dir() else None


def slice_origin(count: int, unit: str) -> str:
    return f"shipped slice (first {count:,} {unit})"


def _missing(name: str, local_file: str, hub_name: str, why: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"dataset {name!r} is not available ({why}). Provide it one of three ways: "
        f"--data-dir DIR (or ${DATA_DIR_ENV}) holding {local_file}; network access to the hub "
        f"dataset {hub_name}; or a local file passed as the source.")


def hub_rows(what: str, load) -> tuple[list | None, str]:
    """(rows, "") from `load()` when the hub is reachable, else (None, why not) at once."""
    why = hub.offline_reason(datasets=True)
    if why is not None:
        return None, why
    try:
        return list(load()), ""
    except Exception as err:  # noqa: BLE001 - unknown dataset, missing dependency, connection lost
        hub.note_failure(err, f"loading {what}")
        return None, f"hub: {type(err).__name__}: {str(err)[:160]}"


def _file_rows(name: str, path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if name == "wikitext2":
        return [line + "\n" if line.strip() else "" for line in lines]
    return [line.strip() for line in lines]


def find_text(name: str, data_dir_path: str | os.PathLike | None = None) -> tuple[list[str], str]:
    """(rows, origin) of a perplexity corpus ("wikitext2" test, "ptb" validation), as `datasets`
    gives them: WikiText-2 raw: each line of wiki.test.raw is one row (a whitespace-only line is
    the empty row); PTB: the stripped lines of ptb.valid.txt (ptb_text_only's `sentence`)."""
    if name not in TEXT_CORPORA:
        raise ValueError(f"unknown corpus {name!r}; use one of {sorted(TEXT_CORPORA)}")
    local_file, (path, config, split, field) = TEXT_CORPORA[name]
    folder = data_dir(data_dir_path)
    if folder is not None and (folder / local_file).is_file():
        return _file_rows(name, folder / local_file), f"data folder {folder}"

    def from_hub():
        import datasets

        return datasets.load_dataset(path, config, split=split)[field]

    rows, why = hub_rows(f"{path}/{config}", from_hub)
    if rows is not None:
        return rows, f"hub {path}/{config} ({split})"
    if (SLICES / local_file).is_file():
        rows = _file_rows(name, SLICES / local_file)
        return rows, slice_origin(len(rows), "lines")
    where = f"{folder / local_file} not found" if folder else "no data folder"
    raise _missing(name, local_file, f"{path}/{config}", f"{where}; {why}")


def text_rows(name: str, data_dir_path: str | os.PathLike | None = None) -> list[str]:
    """The rows of `find_text` (without their origin)."""
    return find_text(name, data_dir_path)[0]


def find_lambada(data_dir_path=None) -> tuple[list[str], str]:
    """(passages, origin): book passages of LAMBADA (context + final word), BookCorpus-style
    prose, the kind of text LLM-Pruner calibrates on, and not one of the evaluation sets here."""
    def passages(path: Path) -> list[str]:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r["context"] + " " + r["continuation"] for r in rows]

    folder = data_dir(data_dir_path)
    if folder is not None and (folder / LAMBADA_FILE).is_file():
        return passages(folder / LAMBADA_FILE), f"data folder {folder}"

    def from_hub():
        import datasets

        return datasets.load_dataset("EleutherAI/lambada_openai", "en", split="test")["text"]

    rows, why = hub_rows("EleutherAI/lambada_openai", from_hub)
    if rows is not None:
        return rows, "hub EleutherAI/lambada_openai (test)"
    if (SLICES / LAMBADA_FILE).is_file():
        rows = passages(SLICES / LAMBADA_FILE)
        return rows, slice_origin(len(rows), "passages")
    raise _missing("lambada", LAMBADA_FILE, "EleutherAI/lambada_openai", why)


def lambada_passages(data_dir_path=None) -> list[str]:
    return find_lambada(data_dir_path)[0]


def text_origin(source: str, data_dir_path=None) -> str:
    """Where `read_text_source(source)` takes its text from, in words."""
    if source in TEXT_CORPORA:
        return find_text(source, data_dir_path)[1]
    if source == "lambada":
        return find_lambada(data_dir_path)[1]
    if source in ("builtin", "default", None):
        return "the project's built-in text"
    if source == SELF_SOURCE:
        return "text the model sampled itself"
    return source


def read_text_source(source: str, data_dir_path=None) -> str:
    """Text of a calibration source: "builtin", "wikitext2" / "ptb" (evaluation sets: avoid for
    calibration when you report their perplexity), "lambada", a .txt/.jsonl file or a hub id."""
    if source in ("builtin", "default", None):
        return BUILTIN_CALIBRATION.read_text(encoding="utf-8")
    if source in TEXT_CORPORA:
        return "\n\n".join(text_rows(source, data_dir_path))
    if source == "lambada":
        return "\n\n".join(lambada_passages(data_dir_path))
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".jsonl":
            docs = []
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    docs.append(row.get("text") or next(v for v in row.values() if isinstance(v, str)))
            return "\n\n".join(docs)
        return path.read_text(encoding="utf-8")
    if source.startswith((".", "/", "~")):
        raise DataUnavailableError(f"calibration file {source!r} does not exist")
    why = hub.offline_reason(datasets=True)
    if why is not None:
        raise DataUnavailableError(f"calibration source {source!r} is neither 'builtin', a corpus "
                                   f"({', '.join(TEXT_CORPORA)}), 'lambada' nor a local .txt/.jsonl file, "
                                   f"and as a hub dataset it cannot be reached: {why}")
    try:  # a hub dataset with a "text" column, e.g. bookcorpus (LLM-Pruner's choice)
        import datasets

        stream = datasets.load_dataset(source, split="train", streaming=True)
        docs = [row["text"] for _, row in zip(range(2000), stream)]
    except Exception as err:
        raise DataUnavailableError(
            f"calibration source {source!r} is neither 'builtin', a corpus "
            f"({', '.join(TEXT_CORPORA)}), a local .txt/.jsonl file, nor a reachable hub dataset "
            f"with a 'text' column ({type(err).__name__}: {str(err)[:200]})") from err
    return "\n\n".join(docs)


# the default calibration: 32 windows of 128 tokens. LLM-Pruner uses 10 x 64; on the default model
# that moved the default recipe's WikiText-2 perplexity between 2.28x and 2.47x dense across six
# draws (sources x seeds), 32 x 128 between 2.21x and 2.28x (bench/quality.py --draws, README)
CALIBRATION_SAMPLES, CALIBRATION_LEN = 32, 128
# tokens the model appends to each window of given text (any source but `self`) by sampling its own
# continuation (`continued_ids`): on three 10 x 64 book-passage draws of the default model the
# default recipe went from 2.21x to 1.92x dense with 192 (README, "Continued calibration")
CONTINUATION_TOKENS = 192


@dataclass(frozen=True)
class CalibrationSpec:
    """Which calibration tokens: `samples` windows of `seq_len` tokens at seeded random offsets of
    `source` (the page's Importance tab; the CLI's --calib-* flags)."""

    source: str = option(SELF_SOURCE, "self (text the model samples itself, seeded: no data needed, any "
                         "language), builtin (project text), lambada (book passages), wikitext2, ptb, a "
                         ".txt/.jsonl file, or a hub dataset id", label="calibration text")
    samples: int = option(CALIBRATION_SAMPLES, "calibration windows (LLM-Pruner: 10 x 64; 32 x 128 depends far "
                          "less on the draw)", bounds=Range(1, 256), label="samples")
    seq_len: int = option(CALIBRATION_LEN, "tokens per window", bounds=Range(8, 1024), label="tokens each")
    seed: int = option(0, "which random windows", bounds=Range(0, None))
    continuation: int = option(CONTINUATION_TOKENS, "tokens the model appends to each window of given text by "
                               "sampling its own continuation (Ji et al. 2025); 0: the text alone; `self` text "
                               "is the model's own already", bounds=Range(0, 2048), label="continued by the model")

    def __post_init__(self):
        for name, kind in (("samples", int), ("seq_len", int), ("seed", int), ("continuation", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        check(self)

    def record(self) -> dict:
        return asdict(self)

    def ids(self, tokenizer, data_dir_path=None, model=None) -> torch.Tensor:
        return calibration_ids(tokenizer, self.source, self.samples, self.seq_len, self.seed, data_dir_path,
                               model, self.continuation)

    def window_tokens(self, model=None) -> int:
        """Tokens per calibration window once continued (`continued_length`)."""
        return self.seq_len + continued_length(self.source, self.seq_len, self.continuation, model)


def continued_length(source: str, seq_len: int, continuation: int, model=None) -> int:
    """Tokens the model appends to each window of `seq_len` from `source`: none for `self` text
    (the model's own already), else `continuation`, no more than the `model`'s context leaves."""
    if source == SELF_SOURCE or continuation <= 0:
        return 0
    context = context_length(model)                 # None without a model
    return max(0, min(continuation, context - seq_len)) if context else continuation


def continued_ids(model, ids: torch.Tensor, new_tokens: int, seed: int = 0,
                  batch_size: int = SELF_BATCH) -> torch.Tensor:
    """(n, L) windows of given text -> (n, L + new_tokens): each continued by tokens the model
    samples after it (`SELF_SAMPLING`: temperature 1, no top-p or top-k cut; end-of-text held off
    until `new_tokens` are written, so the windows stay one length), seeded without touching the
    global random state.

    Ji et al. 2025 ("Beware of Calibration Data for Pruning Large Language Models", ICLR, arXiv
    2410.17711): the model's continuations of prefixes from a text are closer to its training data
    than the text itself, and calibrate pruning better. The given text keeps its place as the prefix.
    """
    if new_tokens <= 0:
        return ids
    # no row ends early (end-of-text held off), so nothing is padded
    written = sampled(model, ids, new_tokens, seed, batch_size, min_new_tokens=new_tokens, pad_token_id=0)
    return torch.cat([w[:, : ids.shape[1] + new_tokens].cpu() for w in written])            # (n, L + new)


def sampled(model, prompts: torch.Tensor, max_new_tokens: int, seed: int, batch_size: int = SELF_BATCH,
            **generate_kwargs) -> list[torch.Tensor]:
    """The model's `SELF_SAMPLING` continuations of (n, L) `prompts`, `batch_size` rows at a time ->
    one (b, L + up to max_new_tokens) tensor per batch on the model's device; seeded on a forked
    generator (the global random state untouched), each step's logits and cache reused from the heap."""
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
            reusing_freed_memory(trim_delay_s=0):
        torch.manual_seed(seed)
        for batch in torch.split(prompts, batch_size):                              # (b, L)
            batch = batch.to(device)
            out.append(model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=True,
                                      **SELF_SAMPLING, max_new_tokens=max_new_tokens, **generate_kwargs))
    return out


def self_document_length(seq_len: int, model=None) -> int:
    """New tokens per self-generated document for windows of `seq_len`: 1.25 windows, and no
    more than the `model`'s context holds after its start token (a tiny test model's 128
    positions; sampling past them is undefined for any model)."""
    length = seq_len + seq_len // 4
    context = context_length(model)                 # None without a model
    return min(length, context - 1) if context else length


def self_generated_text(model, tokenizer, n_docs: int, max_new_tokens: int, seed: int = 0,
                        batch_size: int = SELF_BATCH) -> str:
    """`n_docs` texts the model samples itself from its start-of-text token (`SELF_SAMPLING`:
    temperature 1, no top-p or top-k cut; each ends at end-of-text or `max_new_tokens`), joined by blank lines;
    seeded without touching the global random state.

    Self-calibration (Williams, Chrysostomou, Aletras 2025, NAACL, arXiv 2410.17170): text drawn
    from the model's own distribution stands in for its training data, which no one ships, in
    any language or domain the model knows (README, "Calibration text").
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("self-generated calibration needs a start-of-text token (bos or eos)")
    prompts = torch.full((n_docs, 1), start, dtype=torch.long)
    written = sampled(model, prompts, max_new_tokens, seed, batch_size,
                      pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id or 0)
    docs = [d for out in written for d in tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)]
    return "\n\n".join(d.strip() for d in docs if d.strip())


def self_documents(num_samples: int, seq_len: int, model=None) -> tuple[int, int]:
    """(documents, new tokens each) written for `num_samples` windows of `seq_len`: twice the
    tokens the windows need, in documents of 1.25 windows, so that windows start anywhere, as in
    any other text, and overlap little (README, "Calibration text")."""
    return 2 * num_samples, self_document_length(seq_len, model)


def self_text_is_kept(model, tokenizer, num_samples: int, seq_len: int, seed: int = 0) -> bool:
    """Whether the text for these calibration windows is on disk already (read, not written)."""
    settings = self_text_settings(*self_documents(num_samples, seq_len, model), seed)
    return text_cache.read(text_cache.text_key(model, tokenizer, settings)) is not None


def self_text_settings(n_docs: int, max_new_tokens: int, seed: int, batch_size: int = SELF_BATCH) -> dict:
    """Everything besides the model that decides what `self_generated_text` writes."""
    return {"documents": n_docs, "max_new_tokens": max_new_tokens, "seed": seed, "batch": batch_size,
            **SELF_SAMPLING}


def kept_self_text(model, tokenizer, n_docs: int, max_new_tokens: int, seed: int = 0) -> str:
    """`self_generated_text`, read back from disk when this model already wrote it for these
    settings (the default model's default calibration ships with the package), else written and
    kept (`pruner.text_cache`)."""
    key = text_cache.text_key(model, tokenizer, self_text_settings(n_docs, max_new_tokens, seed))
    text = text_cache.read(key)
    if text is None:
        text = self_generated_text(model, tokenizer, n_docs, max_new_tokens, seed)
        text_cache.write(key, text)
    return text


def calibration_ids(tokenizer, source: str = "builtin", num_samples: int = CALIBRATION_SAMPLES,
                    seq_len: int = CALIBRATION_LEN, seed: int = 0, data_dir_path=None,
                    model=None, continuation: int = 0) -> torch.Tensor:
    """(num_samples, seq_len) token windows at seeded random offsets of the source text.

    Like LLM-Pruner's get_examples: random windows of `seq_len` tokens, no special tokens.
    source "self": windows of text the `model` samples itself (`self_generated_text`), seeded by `seed`.
    continuation: any other source's windows, each continued by this many tokens the `model`
    samples (`continued_ids`; CalibrationSpec's default is CONTINUATION_TOKENS, this function's 0)
    -> (num_samples, seq_len + continuation), less where the model's context ends.
    """
    if num_samples < 1 or seq_len < 2:
        raise ValueError("calibration needs num_samples >= 1 and seq_len >= 2")
    if source == SELF_SOURCE:
        if model is None:
            raise ValueError("self-generated calibration needs the model that writes it")
        text = kept_self_text(model, tokenizer, *self_documents(num_samples, seq_len, model), seed)
    else:
        text = read_text_source(source, data_dir_path)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if ids.numel() < seq_len:
        raise DataUnavailableError(
            f"calibration source {source!r} has {ids.numel()} tokens, fewer than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (num_samples,), generator=gen)
    windows = torch.stack([ids[s: s + seq_len] for s in starts.tolist()])           # (n, seq_len)
    new_tokens = continued_length(source, seq_len, continuation, model)
    if new_tokens:
        if model is None:
            raise ValueError("continued calibration needs the model that writes the continuations")
        windows = continued_ids(model, windows, new_tokens, seed)                    # (n, seq_len + new)
    return windows
