"""Subtask oracle cases (group `subtasks`) that the engine already reproduces.

The remaining subtask cases (tasks that need nnU-Net's own resampling, and the large crops) belong to
the subtasks issue and join this list as they pass.
"""
from __future__ import annotations

import json

import pytest

from conftest import ORACLE, REF
from parity import assert_output_parity
from totalseg.cli.totalsegmentator import main

SUPPORTED = ["body_files", "body_fast_ml", "breasts", "vertebrae_body", "body_mr", "vertebrae_mr", "lung_nodules",
             "head_glands_cavities", "head_muscles", "headneck_bones_vessels"]


def _cases():
    if not (ORACLE / "cases.json").is_file():
        return []
    cases = json.loads((ORACLE / "cases.json").read_text())
    return [c for c in cases if c["name"] in SUPPORTED]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_subtask_case(case, use_home, tmp_path):
    args = [a.replace("{ref}", str(REF)).replace("{out}", str(tmp_path)) for a in case["args"]]
    assert main(args + ["-d", "cpu", "-q"]) == 0
    name = args[args.index("-o") + 1].rsplit("/", 1)[1]
    assert_output_parity(tmp_path / name, ORACLE / name)
