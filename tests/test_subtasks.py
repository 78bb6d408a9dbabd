"""Subtasks against the official tool's outputs.

- Every oracle case of the group `subtasks` (../shared/data/oracle_tiny, official 2.18.0 with fake_weights_tiny).
- tests/data/oracle_extra: subtasks the shared oracle lacks (pleural_pericard_effusion, oculomotor_muscles,
  the licensed tissue_types and heartchambers_highres with its remove-outside step), made by the official
  2.18.0 with fake_weights_tiny plus tests/data/tiny_weights (tests/data/make_oracle_extra.sh).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import ORACLE, REF, _copy_home
from parity import assert_output_parity
from totalseg import config
from totalseg.cli.totalsegmentator import main

DATA = Path(__file__).parent / "data"
EXTRA = DATA / "oracle_extra"
EXTRA_CASES = ["pleural_pericard_effusion", "tissue_types", "heartchambers_highres",
               "vertebrae_pp", "vertebrae_pp_refined"]
LICENCE = "aca_TESTTESTTEST12"
# Oracle cases whose official run took 9-28 minutes on 2 cores (17 000+ tiles of a model that must run
# one tile at a time): opt-in, `python3 -m pytest -m slow tests/test_subtasks.py`.
SLOW = {"lung_vessels", "liver_vessels", "headneck_muscles"}  # made up, of the right form (checked offline by its length)


def _cases():
    if not (ORACLE / "cases.json").is_file():
        return []
    cases = json.loads((ORACLE / "cases.json").read_text())
    return [pytest.param(c, id=c["name"], marks=[pytest.mark.slow] if c["name"] in SLOW else [])
            for c in cases if c.get("group") == "subtasks"]


def _run(args: list[str], out: Path) -> Path:
    assert main(args + ["-d", "cpu", "-q"]) == 0
    return out / args[args.index("-o") + 1].rsplit("/", 1)[1]


@pytest.mark.parametrize("case", _cases())
def test_subtask_case(case, use_home, tmp_path):
    args = [a.replace("{ref}", str(REF)).replace("{out}", str(tmp_path)) for a in case["args"]]
    name = _run(args, tmp_path).name
    assert_output_parity(tmp_path / name, ORACLE / name)


@pytest.fixture(scope="session")
def extra_home(tmp_path_factory) -> Path:
    """fake_weights_tiny plus the models of tests/data/tiny_weights, with a licence set."""
    home = _copy_home(tmp_path_factory.mktemp("extra") / "home")
    shutil.copytree(DATA / "tiny_weights" / "nnunet" / "results", home / "nnunet" / "results", dirs_exist_ok=True)
    return home


@pytest.mark.parametrize("task", EXTRA_CASES)
def test_extra_subtask_case(task, extra_home, monkeypatch, tmp_path):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(extra_home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    config.update_config({"license_number": LICENCE})
    out = tmp_path / f"{task}.nii.gz"
    _run(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "-ta", task, "--ml"], tmp_path)
    assert_output_parity(out, EXTRA / out.name)


def test_licensed_subtask_refused_without_licence(use_home, tmp_path, capsys):
    out = tmp_path / "tissue.nii.gz"
    assert main(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "-ta", "tissue_types", "--ml",
                 "-d", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "licence" in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_fast_refused_where_official_refuses(use_home, tmp_path, capsys):
    assert main(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(tmp_path / "o"), "-ta", "cerebral_bleed",
                 "--fast", "-d", "cpu"]) == 1
    assert "--fast" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_oculomotor_muscles_end_to_end(use_home, tmp_path):
    """A seed subtask without an official output (its official run needs 45+ minutes here): crop to the skull,
    0.47 x 0.47 x 0.85 mm model; the output has the input's grid and only the task's labels."""
    import nibabel as nib
    import numpy as np

    from totalseg.registry import get_task
    from totalseg.write.labelmap import load_multilabel_nifti

    out = tmp_path / "oculomotor_muscles.nii.gz"
    _run(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "-ta", "oculomotor_muscles", "--ml"], tmp_path)
    ref, img = nib.load(REF / "example_ct_sm.nii.gz"), nib.load(out)
    assert img.shape == ref.shape and np.allclose(img.affine, ref.affine) and img.get_data_dtype() == np.uint8
    task = get_task("oculomotor_muscles")
    labels = np.unique(np.asanyarray(img.dataobj))
    assert set(labels.tolist()) <= {0, *task.classes} and len(labels) > 1
    assert load_multilabel_nifti(out)[1] == task.classes
