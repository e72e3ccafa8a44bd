"""Results that hold a model, moved to disk instead of dropped when the store needs memory.

A class under a small memory budget holds more pruned and merged models than fit: without this,
evicting one means recomputing it (copy, calibration forward, slicing) or, for a merged model,
losing it. `Spill.out` writes the model's tensors (safetensors) into a folder of the export disk
(so spilled models count in the same disk budget) and returns a *skeleton*: the same structure
with every tensor empty (no memory). `Spill.back` puts the tensors from disk into
the skeleton. The cached object itself is never touched, so a step still using it (another
visitor's measurement) finishes normally; its memory is freed when the last user lets go.

Values handled: an `nn.Module` (merged models), a dict whose values include modules (the store's
"pruned" entries), or an object whose attributes include modules (a finished LoRA recovery: its
peft model; its training state, `TRAINING_STATE`, is not kept: a finished recovery never trains
again). Anything else is dropped as before.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .exports import ExportDisk
from .store import CapacityError, size_of


def _modules(value: Any) -> dict[str, torch.nn.Module]:
    if isinstance(value, torch.nn.Module):
        return {"": value}
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if isinstance(v, torch.nn.Module)}
    if hasattr(value, "__dict__") and not isinstance(value, type):      # a finished LoraRecovery
        return {k: v for k, v in vars(value).items() if isinstance(v, torch.nn.Module)}
    return {}


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer once (tied weights under their first name)."""
    out, seen = {}, set()
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


def _skeleton(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of `module` whose parameters and buffers are empty (no memory; same dtype and
    device, so the tensors read back can be set into them); ties between weights are kept (the
    copy maps each shared tensor once)."""
    memo = {}
    for t in _tensors(module).values():
        meta = torch.empty(0, dtype=t.dtype, device=t.device)
        memo[id(t)] = torch.nn.Parameter(meta, requires_grad=t.requires_grad) \
            if isinstance(t, torch.nn.Parameter) else meta
    return copy.deepcopy(module, memo)


class Spill:
    def __init__(self, disk: ExportDisk):
        self.disk = disk

    def out(self, key: str, value: Any) -> tuple[Any, Path] | None:
        """(skeleton value, folder) after writing `value`'s tensors to disk; None when it holds no
        model or the disk budget has no room (the caller drops it then)."""
        modules = _modules(value)
        if not modules:
            return None
        folder = self.disk.new_folder(f"spill:{key}")
        try:
            self.disk.reserve(folder, sum(size_of(m) for m in modules.values()) + 2**16, "a model moved to disk")
        except CapacityError:
            shutil.rmtree(folder, ignore_errors=True)
            return None
        try:
            if isinstance(value, torch.nn.Module):
                skeleton = None
            elif isinstance(value, dict):
                skeleton = dict(value)
            else:               # an object: a shallow copy whose modules are skeletons; a finished
                skeleton = copy.copy(value)      # recovery never trains again: no training state kept
                for state in getattr(skeleton, "TRAINING_STATE", ()):      # LoraRecovery's
                    setattr(skeleton, state, None)
            for i, (name, module) in enumerate(modules.items()):
                tensors = _tensors(module)
                save_file({n: t.detach().contiguous().cpu() for n, t in tensors.items()},
                          str(folder / f"{i}.safetensors"))
                shell = _skeleton(module)
                if skeleton is None:
                    skeleton = shell
                elif isinstance(skeleton, dict):
                    skeleton[name] = shell
                else:
                    setattr(skeleton, name, shell)
        except Exception:
            self.disk.done(folder)
            self.disk.forget({"folder": str(folder)})
            return None
        self.disk.done(folder)
        return skeleton, folder

    def back(self, skeleton: Any, folder: Path) -> Any | None:
        """The value with its tensors read back from `folder` (then deleted); None when the
        folder is gone (the disk budget deleted it for an export)."""
        modules = _modules(skeleton)
        files = [folder / f"{i}.safetensors" for i in range(len(modules))]
        if not all(f.is_file() for f in files):
            self.forget(folder)
            return None
        try:
            for file, module in zip(files, modules.values()):
                state = load_file(str(file))
                for name, t in _tensors(module).items():
                    t.data = state[name].to(t.device)
        except (OSError, KeyError, RuntimeError):      # deleted while reading (the disk budget)
            self.forget(folder)
            return None
        self.forget(folder)
        return skeleton

    def forget(self, folder: Path) -> None:
        self.disk.forget({"folder": str(folder)})
        shutil.rmtree(folder, ignore_errors=True)
