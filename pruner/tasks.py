"""Zero-shot multiple-choice tasks in lm-evaluation-harness's stock prompt formats.

Each document becomes a `Doc`: one (context, continuation) request per choice, the gold index,
and the choice texts whose character lengths normalise acc_norm. Sources in order: the local data
directory (the shared llm-foundry / original-release copies), then the hub through `datasets`.

Formats (lm-eval task yaml):
  boolq          "{passage}\\nQuestion: {question}?\\nAnswer:"  -> " no" | " yes"
  piqa           "Question: {goal}\\nAnswer:"                  -> " {sol}"
  arc_*          "Question: {question}\\nAnswer:"              -> " {choice}"
  openbookqa     "{question_stem}"                            -> " {choice}"
  hellaswag      preprocess("{activity}: {ctx_a} {Ctx_b}")     -> " {preprocess(ending)}"
  winogrande     partial scoring: "{sentence up to _ with option}" -> " {rest of sentence}"
  copa           "{premise without .} because|therefore"      -> "  {choice, first letter lower}"
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .data import SLICES, DataUnavailableError, hub_rows, data_dir, slice_origin

PAPER_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
TASKS = PAPER_TASKS + ("copa",)
FOUNDRY = "llm-foundry-icl"


@dataclass(frozen=True)
class Doc:
    contexts: tuple[str, ...]        # one per choice (winogrande) or the same context repeated
    continuations: tuple[str, ...]   # one per choice, with the leading space delimiter
    gold: int
    choice_texts: tuple[str, ...]    # for acc_norm: len(choice) in characters (lm-eval)


def _mc(context: str, choices: list[str], gold: int) -> Doc:
    return Doc(tuple([context] * len(choices)), tuple(" " + c for c in choices), int(gold),
               tuple(choices))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


# ----------------------------------------------------------------------------- local copies

def _local_boolq(folder: Path) -> list[Doc]:
    docs = []
    for row in _jsonl(folder / FOUNDRY / "boolq.jsonl"):
        query = row["query"]
        passage_question = query[len("Passage: "):] if query.startswith("Passage: ") else query
        docs.append(_mc(passage_question + "\nAnswer:", row["choices"], row["gold"]))
    return docs


def _local_piqa(folder: Path) -> list[Doc]:
    rows = _jsonl(folder / "piqa" / "valid.jsonl")
    labels = (folder / "piqa" / "valid-labels.lst").read_text().split()
    return [_mc(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], int(y))
            for r, y in zip(rows, labels)]


def _local_arc(name: str):
    def load(folder: Path) -> list[Doc]:
        return [_mc(r["query"] + "\nAnswer:", r["choices"], r["gold"])
                for r in _jsonl(folder / FOUNDRY / f"{name}.jsonl")]
    return load


def _local_openbookqa(folder: Path) -> list[Doc]:
    return [_mc(r["query"], r["choices"], r["gold"]) for r in _jsonl(folder / FOUNDRY / "openbook_qa.jsonl")]


def _local_winogrande(folder: Path) -> list[Doc]:
    docs = []
    for r in _jsonl(folder / FOUNDRY / "winogrande.jsonl"):
        options = tuple(r["context_options"])
        docs.append(Doc(options, tuple(" " + r["continuation"].strip() for _ in options),
                        int(r["gold"]), options))
    return docs


def _copa(context: str, choices: list[str], gold: int) -> Doc:
    """lm-eval's copa choices carry their own leading space and the default " " delimiter is
    added again, so its continuations start with two spaces; kept for identical numbers."""
    lowered = [c[0].lower() + c[1:] for c in choices]
    return Doc((context,) * len(lowered), tuple("  " + c for c in lowered), int(gold),
               tuple(" " + c for c in lowered))


def _local_copa(folder: Path) -> list[Doc]:
    return [_copa(re.sub(r",\s*(because|therefore)$", r" \1", r["query"].strip()), r["choices"], r["gold"])
            for r in _jsonl(folder / FOUNDRY / "copa.jsonl")]


LOCAL = {
    "boolq": (_local_boolq, f"{FOUNDRY}/boolq.jsonl"),
    "piqa": (_local_piqa, "piqa/valid.jsonl + piqa/valid-labels.lst"),
    "arc_easy": (_local_arc("arc_easy"), f"{FOUNDRY}/arc_easy.jsonl"),
    "arc_challenge": (_local_arc("arc_challenge"), f"{FOUNDRY}/arc_challenge.jsonl"),
    "openbookqa": (_local_openbookqa, f"{FOUNDRY}/openbook_qa.jsonl"),
    "winogrande": (_local_winogrande, f"{FOUNDRY}/winogrande.jsonl"),
    "copa": (_local_copa, f"{FOUNDRY}/copa.jsonl"),
}


# ----------------------------------------------------------------------------- hub

def _hub_docs(name: str) -> list[Doc]:
    import datasets

    if name == "boolq":
        rows = datasets.load_dataset("google/boolq", split="validation")
        return [_mc(f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", ["no", "yes"], int(r["answer"]))
                for r in rows]
    if name == "piqa":
        rows = datasets.load_dataset("ybisk/piqa", split="validation")
        return [_mc(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], r["label"]) for r in rows]
    if name in ("arc_easy", "arc_challenge"):
        config = "ARC-Easy" if name == "arc_easy" else "ARC-Challenge"
        rows = datasets.load_dataset("allenai/ai2_arc", config, split="test")
        return [_mc(f"Question: {r['question']}\nAnswer:", r["choices"]["text"],
                    r["choices"]["label"].index(r["answerKey"])) for r in rows]
    if name == "openbookqa":
        rows = datasets.load_dataset("allenai/openbookqa", "main", split="test")
        return [_mc(r["question_stem"], r["choices"]["text"], r["choices"]["label"].index(r["answerKey"].strip()))
                for r in rows]
    if name == "winogrande":
        rows = datasets.load_dataset("allenai/winogrande", "winogrande_xl", split="validation")
        docs = []
        for r in rows:
            cut = r["sentence"].index("_")
            options = tuple(r["sentence"][:cut] + o for o in (r["option1"], r["option2"]))
            rest = " " + r["sentence"][cut + 1:].strip()
            docs.append(Doc(options, (rest, rest), int(r["answer"]) - 1, options))
        return docs
    if name == "hellaswag":
        rows = datasets.load_dataset("Rowan/hellaswag", split="validation")
        docs = []
        for r in rows:
            ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
            query = _hellaswag_clean(r["activity_label"] + ": " + ctx)
            docs.append(_mc(query, [_hellaswag_clean(e) for e in r["endings"]], int(r["label"])))
        return docs
    if name == "copa":
        rows = datasets.load_dataset("aps/super_glue", "copa", split="validation")
        connector = {"cause": " because", "effect": " therefore"}
        return [_copa(r["premise"].strip()[:-1] + connector[r["question"]], [r["choice1"], r["choice2"]],
                      r["label"]) for r in rows]
    raise ValueError(name)


def find_task(name: str, data_dir_path=None, limit: int | None = None) -> tuple[list[Doc], str]:
    """(the first `limit` documents of a task, where they came from): the data folder, else the
    hub, else the slice shipped in the package (lm-eval's --limit takes the first N too, so a
    slice gives the same documents as the full set up to its length)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; use any of {', '.join(TASKS)}")
    folder = data_dir(data_dir_path)
    local = LOCAL.get(name)
    if folder is not None and local is not None:
        try:
            docs = local[0](folder)
            return (docs[:limit] if limit else docs), f"data folder {folder}"
        except FileNotFoundError:
            pass
    docs, why = hub_rows(f"task {name}", lambda: _hub_docs(name))
    if docs is not None:
        return (docs[:limit] if limit else docs), "hub"
    if local is not None:
        try:
            docs = local[0](SLICES)
            return (docs[:limit] if limit else docs), slice_origin(len(docs), "items")
        except FileNotFoundError:
            pass
    wanted = local[1] if local else "(no local copy: hub only)"
    raise DataUnavailableError(
        f"task {name!r} is not available. Provide it one of three ways: --data-dir DIR "
        f"(or $PRUNER_DATA_DIR) holding {wanted}; network access to the hub dataset; "
        f"or drop the task. ({why})")


def load_task(name: str, data_dir_path=None, limit: int | None = None) -> list[Doc]:
    """The documents of `find_task` (without their origin)."""
    return find_task(name, data_dir_path, limit)[0]
