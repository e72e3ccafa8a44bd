"""Hub models are sized before download, refused with numbers, fetched as safetensors + config +
tokenizer only; offline, a hub id fails at once."""

import time
from types import SimpleNamespace

import pytest

from pruner import download, hub
from pruner.download import DownloadRefused, HubSize, allowed, check_fits, size_from_info
from pruner.models import ModelLoadError, load_model


def sibling(name, size):
    return SimpleNamespace(rfilename=name, size=size)


def info(files, total=None):
    return SimpleNamespace(id="org/model", siblings=[sibling(n, s) for n, s in files],
                           safetensors=SimpleNamespace(total=total) if total else None)


def test_only_safetensors_config_and_tokenizer_files_are_fetched():
    assert allowed("model-00001-of-00002.safetensors") and allowed("model.safetensors.index.json")
    assert allowed("config.json") and allowed("tokenizer.json") and allowed("merges.txt")
    for other in ("pytorch_model.bin", "model.gguf", "onnx/model.safetensors", "modeling_x.py",
                  "original/consolidated.00.pth", "README.md"):
        assert not allowed(other), other


def test_size_counts_only_what_would_be_fetched():
    size = size_from_info(info([("model.safetensors", 1000), ("pytorch_model.bin", 9999), ("config.json", 10),
                                ("tokenizer.json", 20), ("onnx/model.onnx", 5000)], total=500))
    assert size.params == 500 and size.params_exact
    assert size.weight_bytes == 1000 and size.download_bytes == 1030
    assert set(size.files) == {"model.safetensors", "config.json", "tokenizer.json"}
    guessed = size_from_info(info([("model.safetensors", 1000)]))
    assert guessed.params == 500 and not guessed.params_exact        # bytes / 2 (16-bit weights)


def test_pickle_only_repositories_are_refused():
    with pytest.raises(DownloadRefused, match="safetensors only"):
        size_from_info(info([("pytorch_model.bin", 1000), ("config.json", 10)]))


def test_refusals_give_the_numbers():
    size = HubSize("org/big", params=70_000_000_000, weight_bytes=140 * 2**30, download_bytes=140 * 2**30)
    with pytest.raises(DownloadRefused, match=r"70.00 B parameters.*at most 2.00 B"):
        check_fits(size, 4, max_params=2e9)
    with pytest.raises(DownloadRefused, match=r"needs 260.8 GiB .*more than the 12.0 GiB"):
        check_fits(size, 4, max_bytes=12 * 2**30)
    check_fits(HubSize("org/small", 100, 200, 300), 4, max_params=2e9, max_bytes=2**30)   # fits


def test_fetch_sizes_before_it_downloads(monkeypatch):
    calls = []
    monkeypatch.setattr(hub, "offline_reason", lambda datasets=False: None)
    monkeypatch.setattr(download, "size_hub_model",
                        lambda repo_id, revision=None: HubSize(repo_id, 8_000_000_000, 16 * 2**30, 16 * 2**30,
                                                               ("model.safetensors", "config.json")))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.append((repo_id, kw)) or "/tmp/snapshot")
    with pytest.raises(DownloadRefused):
        download.fetch("org/eight-b", max_bytes=16 * 2**30)
    assert calls == []                                             # nothing downloaded
    assert download.fetch("org/eight-b", bytes_per_param=2, max_bytes=16 * 2**30) == "/tmp/snapshot"
    assert calls[0][1]["allow_patterns"] == ["model.safetensors", "config.json"]


def test_an_unreachable_hub_id_fails_fast_offline():
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        load_model("nobody/does-not-exist-anywhere", device="cpu")
    assert time.monotonic() - start < 3
