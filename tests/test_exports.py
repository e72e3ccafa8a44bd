"""Exports under a disk budget: least recently used folders go first, refusal with the numbers,
files deleted with their cache entry, and a zip built by moving files (no second copy)."""

import pytest

from components.exports import ExportDisk, folder_bytes
from components.handlers import zip_folder
from components.store import CapacityError


def write(folder, nbytes):
    (folder / "w.bin").write_bytes(b"x" * nbytes)


def test_least_recently_used_exports_are_deleted_to_fit(tmp_path):
    disk = ExportDisk(tmp_path / "exports", budget_bytes=3000)
    a, b = disk.new_folder("a"), disk.new_folder("b")
    for folder in (a, b):
        disk.reserve(folder, 1000)
        write(folder, 1000)
        disk.done(folder)
    assert disk.touch(a / "w.bin")                  # a used after b: b is older now
    c = disk.new_folder("c")
    disk.reserve(c, 1500)
    assert a.is_dir() and not b.exists()
    write(c, 1500)
    disk.done(c)
    assert disk.used_bytes() == 2500


def test_too_large_or_crowded_exports_are_refused_with_numbers(tmp_path):
    disk = ExportDisk(tmp_path / "exports", budget_bytes=1000)
    with pytest.raises(CapacityError, match=r"GB of disk, more than the"):
        disk.reserve(disk.new_folder("big"), 2000)
    busy = disk.new_folder("busy")
    disk.reserve(busy, 800)                          # being written: cannot be deleted
    with pytest.raises(CapacityError, match="retry"):
        disk.reserve(disk.new_folder("next"), 500)


def test_an_evicted_entry_takes_its_files_along(tmp_path):
    disk = ExportDisk(tmp_path / "exports", budget_bytes=10**6)
    folder = disk.new_folder("x")
    disk.reserve(folder, 100)
    write(folder, 100)
    disk.done(folder)
    disk.forget({"archive": str(folder / "w.bin"), "loader": "uniform widths"})
    assert not folder.exists() and disk.used_bytes() == 0


def test_the_server_starts_with_an_empty_export_folder(tmp_path):
    root = tmp_path / "exports"
    (root / "stale").mkdir(parents=True)
    ExportDisk(root, budget_bytes=100)
    assert list(root.iterdir()) == []


def test_zip_moves_files_instead_of_copying(tmp_path):
    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "a.safetensors").write_bytes(b"a" * 500)
    (tmp_path / "model" / "sub" / "b.json").write_text("{}")
    archive = zip_folder(tmp_path, "model")
    import zipfile

    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["model/a.safetensors", "model/sub/b.json"]
    assert not (tmp_path / "model").exists() and folder_bytes(tmp_path) == (tmp_path / "model.zip").stat().st_size
