"""arf.provenance: what a checkpoint records about the machine and libraries that made it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from arf.provenance import cpu_model, environment


def test_environment_names_versions_and_hardware_and_is_json() -> None:
    env = json.loads(json.dumps(environment()))  # arf.json must hold it as is
    assert torch.__version__.startswith(env["packages"]["torch"])
    assert {"open_clip_torch", "safetensors", "numpy"} <= set(env["packages"])
    assert env["cpu"] and env["platform"] and env["torch_threads"] == torch.get_num_threads()
    assert env["accelerator"] is None or isinstance(env["accelerator"], str)


def test_cpu_model_reads_cpuinfo_and_falls_back_without_it(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU @ 2.0GHz\nflags\t: fpu\n")
    assert cpu_model(info) == "Test CPU @ 2.0GHz"
    # no /proc (macOS, Windows): platform's answer, never an exception or an empty string
    assert cpu_model(tmp_path / "missing")
