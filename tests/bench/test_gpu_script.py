"""The CPU-side parts of the GPU check: bench/gpu.sh's arguments, its clean skip without CUDA, and the
argument checks of the featurisation benchmark it calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.sh"


def gpu_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, *args], capture_output=True, text=True, timeout=120
    )


def test_gpu_script_is_executable_and_documents_its_arguments():
    assert SCRIPT.stat().st_mode & 0o111
    done = gpu_sh("--help")
    assert done.returncode == 0
    for flag in ("--n-features", "--n-scale", "--skip-tests", "--dry-run"):
        assert flag in done.stdout


def test_gpu_script_refuses_bad_arguments():
    assert gpu_sh("--frobnicate").returncode == 2
    assert gpu_sh("--big-batch", "lots").returncode == 2
    bad = gpu_sh("--n-scale", "many")
    assert bad.returncode == 2 and "positive integers" in bad.stderr


def test_gpu_script_dry_run_lists_the_three_checks():
    done = gpu_sh("--dry-run", "--n-scale", "500")
    assert done.returncode == 0
    lines = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert len(lines) == 4
    assert "-m gpu" in lines[0]
    assert "bench/features.py --device cuda --n 256" in lines[1]
    assert "bench/featurize_scale.py --device cuda --n 500" in lines[2]
    assert "--batch-tokens 16384" in lines[3] and "--batch-tokens" not in lines[2]
    assert len([x for x in gpu_sh("--dry-run", "--big-batch", "0").stdout.splitlines() if x.startswith("+ ")]) == 3
    with_data = gpu_sh("--dry-run", "--data", "alpaca.jsonl").stdout
    assert "bench/features.py --device cuda --n 256 --data alpaca.jsonl" in with_data
    assert (
        "--skip-tests" not in done.stdout
        and len([x for x in gpu_sh("--dry-run", "--skip-tests").stdout.splitlines() if x.startswith("+ ")]) == 3
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip on a machine without CUDA")
def test_gpu_script_skips_cleanly_without_cuda():
    done = gpu_sh()
    assert done.returncode == 0
    assert "no CUDA device" in done.stdout and "skipped" in done.stdout


def test_featurize_scale_checks_its_arguments():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import featurize_scale
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert featurize_scale.parse_args(["--sizes", "256,4096"]).size_list == [256, 4096]
    assert featurize_scale.parse_args(["--n", "20000"]).size_list == [20000]
    with pytest.raises(SystemExit):
        featurize_scale.parse_args(["--sizes", "0"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            featurize_scale.parse_args(["--device", "cuda"])
