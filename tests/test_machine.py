"""The machine description used by reports and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

from gradsift.machine import cpu_name, machine_info


def test_cpu_name_reads_the_model_name_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU 9000 @ 3.0GHz\nflags\t: a b\n")
    assert cpu_name(info) == "Test CPU 9000 @ 3.0GHz"


def test_cpu_name_falls_back_when_the_file_is_missing_or_silent(tmp_path: Path) -> None:
    missing = cpu_name(tmp_path / "absent")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t:   \n")
    assert missing and cpu_name(info) == missing


def test_machine_info_is_json_of_strings() -> None:
    info = machine_info()
    assert {"platform", "processor", "cpus", "python", "torch", "gpu", "gradsift"} <= set(info)
    assert all(isinstance(v, str) and v for v in info.values())
    assert json.loads(json.dumps(info)) == info
