"""Hub models, sized before anything is downloaded, and fetched as safetensors + config + tokenizer.

`size_hub_model(repo_id)` reads the repository's file list with sizes (one API call, no weights);
`check_fits(size, ...)` refuses a model over a parameter cap or a memory limit, with the numbers;
`fetch(repo_id)` downloads only the files `ALLOWED` names (never pickled weights, no remote code,
no ONNX / GGUF / other frameworks' copies) and returns the local snapshot folder. Offline, a
cached snapshot is used when one exists; otherwise the hub's absence is reported at once.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from . import hub

WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
METADATA = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
            "chat_template.jinja", "chat_template.json")
ALLOWED = WEIGHTS + METADATA
API_TIMEOUT_S = 10.0


class DownloadRefused(RuntimeError):
    """A hub model that cannot or may not be fetched; the message gives the numbers and the reason."""


@dataclass(frozen=True)
class HubSize:
    repo_id: str
    params: int                    # parameters (safetensors metadata, else weight bytes / 2)
    weight_bytes: int              # bytes of the safetensors files
    download_bytes: int            # bytes of every file that would be fetched
    files: tuple[str, ...] = field(default=())
    params_exact: bool = True


def allowed(name: str) -> bool:
    """Top-level files only (sub-folders hold other variants: onnx/, original/, ...)."""
    return "/" not in name and any(fnmatch.fnmatch(name, pattern) for pattern in ALLOWED)


def size_from_info(info) -> HubSize:
    """A HubSize from huggingface_hub's ModelInfo (fetched with files_metadata=True)."""
    siblings = [s for s in (info.siblings or []) if allowed(s.rfilename)]
    weights = [s for s in siblings if s.rfilename.endswith(".safetensors")]
    if not weights:
        others = sorted({s.rfilename.rsplit(".", 1)[-1] for s in (info.siblings or [])
                         if s.rfilename.endswith((".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack"))})
        raise DownloadRefused(
            f"{info.id} has no safetensors weights" + (f" (only {', '.join(others)} files)" if others else "")
            + ": this project loads safetensors only, never pickled weights.")
    weight_bytes = sum(int(s.size or 0) for s in weights)
    total = getattr(getattr(info, "safetensors", None), "total", None)
    return HubSize(info.id, int(total) if total else weight_bytes // 2, weight_bytes,
                   sum(int(s.size or 0) for s in siblings), tuple(s.rfilename for s in siblings),
                   params_exact=bool(total))


def size_hub_model(repo_id: str, revision: str | None = None) -> HubSize:
    """The size of a hub model from its file list (no weights downloaded); fails fast offline."""
    hub.require(f"loading hub id {repo_id!r}")
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, timeout=API_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - not found, gated, connection lost
        hub.note_failure(err, f"sizing {repo_id}")
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DownloadRefused(f"hub id {repo_id!r} could not be looked up: {first[:200]}") from err
    return size_from_info(info)


def check_fits(size: HubSize, bytes_per_param: int, max_params: float | None = None,
               max_bytes: int | None = None) -> None:
    """Refuse (DownloadRefused) a model over `max_params` (a count) or whose weights, loaded at
    `bytes_per_param`, exceed `max_bytes`."""
    billions = size.params / 1e9
    about = "" if size.params_exact else "about "
    if max_params is not None and size.params > max_params:
        raise DownloadRefused(
            f"{size.repo_id} has {about}{billions:.2f} B parameters; this server accepts at most "
            f"{max_params / 1e9:.2f} B (PRUNING_STUDIO_MAX_PARAMS). Nothing was downloaded.")
    need = size.params * bytes_per_param
    if max_bytes is not None and need > max_bytes:
        raise DownloadRefused(
            f"{size.repo_id} needs {about}{need / 2**30:.1f} GiB of memory once loaded "
            f"({billions:.2f} B parameters x {bytes_per_param} bytes), more than the "
            f"{max_bytes / 2**30:.1f} GiB this server can give one model. Nothing was downloaded; "
            "choose a smaller model.")


def fetch(repo_id: str, revision: str | None = None, bytes_per_param: int = 4, max_params: float | None = None,
          max_bytes: int | None = None) -> str:
    """The local folder of `repo_id` holding only ALLOWED files: sized and checked first, then
    downloaded (or taken from the cache when the hub is unreachable)."""
    from huggingface_hub import snapshot_download

    why = hub.offline_reason()
    if why is not None:
        try:
            return snapshot_download(repo_id, revision=revision, allow_patterns=list(ALLOWED),
                                     local_files_only=True)
        except Exception as err:  # noqa: BLE001 - not in the cache
            raise hub.HubUnavailableError(
                f"hub id {repo_id!r} is not in the local cache and {why}: use the built-in default "
                "model or a local folder") from err
    size = size_hub_model(repo_id, revision)
    check_fits(size, bytes_per_param, max_params, max_bytes)
    return snapshot_download(repo_id, revision=revision, allow_patterns=list(size.files))
