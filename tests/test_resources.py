"""The memory limit is the container's (cgroup v1 / v2), not the host's /proc/meminfo."""

from pathlib import Path

import pytest

from pruner.resources import cgroup_limit, memory_limit

GB = 2**30


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def meminfo(tmp_path):
    path = tmp_path / "meminfo"
    write(path, f"MemTotal:       {256 * GB // 1024} kB\nMemAvailable:   {200 * GB // 1024} kB\n")
    return path


def v2(tmp_path, own="/", limits=None):
    root = tmp_path / "cg2"
    write(root / "cgroup.controllers", "cpu memory\n")
    for folder, value in (limits or {}).items():
        write(root / folder.strip("/") / "memory.max", value)
    write(tmp_path / "self_cgroup", f"0::{own}\n")
    return root, tmp_path / "self_cgroup"


def test_cgroup_v2_limit_beats_the_hosts_meminfo(tmp_path, meminfo):
    root, self_cgroup = v2(tmp_path, limits={"/": f"{16 * GB}\n"})
    limit = memory_limit({}, root, self_cgroup, meminfo, gpu_bytes=None)
    assert limit.bytes == 16 * GB and "cgroup v2" in limit.source


def test_cgroup_v2_max_means_no_limit(tmp_path, meminfo):
    root, self_cgroup = v2(tmp_path, limits={"/": "max\n"})
    assert cgroup_limit(root, self_cgroup) is None
    limit = memory_limit({}, root, self_cgroup, meminfo, gpu_bytes=None)
    assert limit.bytes == 200 * GB and "MemAvailable" in limit.source


def test_cgroup_v2_the_tightest_of_the_own_group_and_its_parents(tmp_path, meminfo):
    root, self_cgroup = v2(tmp_path, own="/kubepods/pod1/app",
                           limits={"/kubepods/pod1/app": "max", "/kubepods/pod1": f"{12 * GB}",
                                   "/kubepods": f"{64 * GB}"})
    assert cgroup_limit(root, self_cgroup)[0] == 12 * GB


def test_cgroup_v1_limit_and_its_unlimited_marker(tmp_path, meminfo):
    root = tmp_path / "cg1"
    write(root / "memory" / "memory.limit_in_bytes", f"{8 * GB}\n")
    write(tmp_path / "self_cgroup", "4:memory:/docker/abc\n0::/\n")
    limit = memory_limit({}, root, tmp_path / "self_cgroup", meminfo, gpu_bytes=None)
    assert limit.bytes == 8 * GB and "cgroup v1" in limit.source
    write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", f"{4 * GB}\n")
    assert cgroup_limit(root, tmp_path / "self_cgroup")[0] == 4 * GB
    write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_limit(root, tmp_path / "self_cgroup") is None


def test_no_cgroup_files_fall_back_to_meminfo_then_a_fixed_value(tmp_path, meminfo):
    absent = tmp_path / "nothing"
    assert cgroup_limit(absent, absent / "cgroup") is None
    assert memory_limit({}, absent, absent / "cgroup", meminfo, gpu_bytes=None).bytes == 200 * GB
    fallback = memory_limit({}, absent, absent / "cgroup", absent / "meminfo", gpu_bytes=None)
    assert fallback.bytes == 8 * GB and "fallback" in fallback.source


def test_gpu_memory_and_the_override(tmp_path, meminfo):
    root, self_cgroup = v2(tmp_path, limits={"/": f"{16 * GB}"})
    assert memory_limit({}, root, self_cgroup, meminfo, gpu_bytes=10 * GB).source == "GPU memory"
    override = memory_limit({"PRUNING_STUDIO_MEMORY_GB": "3"}, root, self_cgroup, meminfo, gpu_bytes=10 * GB)
    assert override.bytes == 3 * GB and "PRUNING_STUDIO_MEMORY_GB" in override.source


def test_this_machine_reads_a_limit():
    assert memory_limit().bytes > 0


def test_cpu_quota_and_server_threads(tmp_path):
    """The cgroup's CPU quota caps the cores (a 2-vCPU Space on a big host); from 4 cores up the
    server leaves one for the web server; $PRUNING_STUDIO_THREADS overrides."""
    from pruner.resources import cpu_quota, server_threads, usable_cores

    v2 = tmp_path / "v2"
    (v2 / "app").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory")
    (v2 / "cpu.max").write_text("max 100000\n")
    (v2 / "app" / "cpu.max").write_text("200000 100000\n")
    own = tmp_path / "self-cgroup"
    own.write_text("0::/app\n")
    assert cpu_quota(v2, own) == 2.0
    (v2 / "app" / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(v2, own) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(v1, own) == 1.5
    (v1 / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(v1, own) is None
    assert cpu_quota(tmp_path / "absent", own) is None
    assert usable_cores(quota=2.0) <= 2 and usable_cores(quota=None) >= 1
    assert server_threads({}, cores=2) == 2 and server_threads({}, cores=1) == 1
    assert server_threads({}, cores=8) == 7 and server_threads({"PRUNING_STUDIO_THREADS": "3"}, cores=8) == 3


def test_reusing_freed_memory_is_counted_and_hands_the_heap_back():
    """Inside the phase freed 8 MB blocks stay in the heap for reuse; leaving it (the last of
    nested or concurrent users) restores the bounded mode and trims TRIM_DELAY_S later, unless a
    phase has begun again (steps back to back keep one heap): RSS returns to what is live."""
    import threading
    import time

    import torch

    from pruner.resources import ALLOCATOR, TRIM_DELAY_S, return_large_frees_to_os, reusing_freed_memory, trim_if_idle
    from pruner.stats import rss_bytes

    if not return_large_frees_to_os():
        pytest.skip("not glibc")
    trim_if_idle()
    phases = ALLOCATOR.phases
    before = rss_bytes()
    with reusing_freed_memory():
        with reusing_freed_memory():         # nested: one phase
            assert ALLOCATOR.reusers == 2
        blocks = [torch.ones(2 * 2**20) for _ in range(24)]     # 24 x 8 MB from the heap
        assert rss_bytes() - before > 150 * 2**20
        del blocks
        seen = []
        worker = threading.Thread(target=lambda: seen.append(ALLOCATOR.reusers))
        with reusing_freed_memory():
            worker.start()
            worker.join()
    assert ALLOCATOR.reusers == 0 and ALLOCATOR.phases == phases + 1
    assert rss_bytes() - before > 150 * 2**20        # kept for a phase that follows at once
    with reusing_freed_memory():                     # the next phase: no trim while it runs
        assert not trim_if_idle()
        again = [torch.ones(2 * 2**20) for _ in range(24)]
        del again
    deadline = time.monotonic() + 10 * TRIM_DELAY_S
    while ALLOCATOR.pending_trim is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ALLOCATOR.pending_trim is None            # trimmed by the timer, on its own
    assert rss_bytes() - before < 40 * 2**20         # the 192 MB freed went back to the OS

