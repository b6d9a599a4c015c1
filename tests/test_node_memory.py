"""What a peer process reports of its memory: peak RSS, and resident memory split by what backs it."""

from pathlib import Path

import numpy as np
import pytest

from peer.grpc.node import peak_rss_mb, resident_mb

ROLLUP = """00400000-7ffc3b738000 ---p 00000000 00:00 0                          [rollup]
Rss:              614400 kB
Pss:              300000 kB
Shared_Clean:     100000 kB
Private_Dirty:    300000 kB
Anonymous:        409600 kB
Swap:                  0 kB
"""


def test_resident_memory_is_split_into_anonymous_and_file_backed(tmp_path):
    rollup = tmp_path / "smaps_rollup"
    rollup.write_text(ROLLUP)
    assert resident_mb(str(rollup)) == {"rss_mb": 600.0, "anonymous_mb": 400.0, "file_mb": 200.0, "pss_mb": 293.0}
    assert resident_mb(str(tmp_path / "absent")) == {}  # not Linux, or an old kernel: nothing claimed
    rollup.write_text("Rss: 10 kB\n")
    assert resident_mb(str(rollup)) == {}


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's smaps_rollup")
def test_this_process_grows_its_anonymous_memory_by_what_it_allocates():
    before = resident_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    after = resident_mb()
    assert after["anonymous_mb"] - before["anonymous_mb"] > 60
    assert after["rss_mb"] <= peak_rss_mb() + 1
    assert block.sum() == len(block)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's smaps_rollup")
def test_a_process_sharing_torch_libraries_with_another_has_a_share_of_them_alone():
    import json
    import subprocess
    import sys

    import torch  # noqa: F401  (this process maps torch's libraries, as every peer process does)

    code = "import json, torch; from peer.grpc.node import resident_mb; print(json.dumps(resident_mb()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["pss_mb"] <= child["rss_mb"]
    # its file-backed pages are mapped by this process too (and maybe more): at most half of them is its share
    assert child["rss_mb"] - child["pss_mb"] >= 0.4 * child["file_mb"]
    assert child["file_mb"] > 50  # torch's libraries, resident
