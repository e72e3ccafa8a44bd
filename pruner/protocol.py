"""The one measurement protocol: the quick perplexity and the decode speed, as the dashboard, the
CLI, the model card and the benchmarks take them.

- **Quick perplexity**: WikiText-2 (test split, raw), the first `QUICK_PPL_WINDOWS` consecutive
  windows of `QUICK_PPL_SEQ_LEN` tokens, exp(mean token NLL). A property of the model's content:
  measured once per model and reused wherever it is shown.
- **Decode speed**: greedy tokens/s for exactly `SPEED_TOKENS` new tokens after the paper's prompt,
  `SPEED_RUNS` runs per model after a warm-up, reported as median and range. A property of the
  model *and the moment* (a shared machine's load changes): models shown side by side are timed
  in one run, taking turns run by run (`decode_speeds`), never compared across moments.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .data import DataUnavailableError
from .evaluate import decode_rates, perplexity
from .generate import PAPER_PROMPT

QUICK_PPL_WINDOWS = 32
QUICK_PPL_SEQ_LEN = 128
SPEED_TOKENS = 32
SPEED_RUNS = 3

QUICK_PPL_TEXT = f"WikiText-2, first {QUICK_PPL_WINDOWS} windows of {QUICK_PPL_SEQ_LEN} tokens"
SPEED_TEXT = (f"greedy tokens/s, median (range) of {SPEED_RUNS} runs of {SPEED_TOKENS} new tokens after "
              "the paper's prompt, the models shown together timed in one run, taking turns")


@dataclass(frozen=True)
class Speed:
    """Decode speed of one model in one side-by-side run: median and range of its runs."""
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, rates: list[float]) -> "Speed":
        return cls(float(statistics.median(rates)), float(min(rates)), float(max(rates)))

    def text(self) -> str:
        return f"{self.median:.1f} tokens/s (range {self.low:.1f}-{self.high:.1f})"


def quick_perplexity(model, tokenizer, data_dir=None) -> tuple[float | None, str]:
    """(the quick perplexity, where its text came from: a data folder, the hub or the slice shipped
    in the package); (None, why) only where none of them holds WikiText-2."""
    try:
        res = perplexity(model, tokenizer, "wikitext2", seq_len=QUICK_PPL_SEQ_LEN,
                         max_windows=QUICK_PPL_WINDOWS, data_dir_path=data_dir, progress=False)
        return res["ppl"], res["data"]
    except DataUnavailableError as err:
        return None, f"unavailable ({str(err).split('(')[0].strip()})"


def is_quick_perplexity(corpus: str, windows: int | None, seq_len: int = QUICK_PPL_SEQ_LEN) -> bool:
    """Whether an evaluation of `corpus` is exactly the quick perplexity (so it can be reused)."""
    return corpus == "wikitext2" and windows == QUICK_PPL_WINDOWS and seq_len == QUICK_PPL_SEQ_LEN


def decode_speeds(models: list, tokenizer, runs: int = SPEED_RUNS, new_tokens: int = SPEED_TOKENS) -> list[Speed]:
    """The decode speed of every model in `models`, timed side by side in this one run."""
    return [Speed.of(r) for r in decode_rates(models, tokenizer, PAPER_PROMPT, new_tokens, runs)]
