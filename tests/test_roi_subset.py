"""--roi_subset with every class name of total and total_mr, and with classes the crop model does not find."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from conftest import REF
from totalseg.cli.totalsegmentator import main
from totalseg.run.pipeline import class_mask
from totalseg.run.plan import Options, crop_source, plan_run
from totalseg.registry import get_task


@pytest.mark.parametrize("task_name", ["total", "total_mr"])
def test_every_class_name_is_accepted_and_cropped_by(task_name):
    task = get_task(task_name)
    default = task.mode(False, False)
    for name in task.classes.values():
        models = plan_run(task, Options(roi_subset=(name,))).models()
        parts = [m for m in models if m.id in default.models]
        # only the part that holds the class runs (as the official tool)
        assert len(parts) == 1 and name in parts[0].classes.values(), name
        source, mode = crop_source(task, [name], task.modality == "mr")
        assert {m.id for m in models} - {p.id for p in parts} == set(source.modes[mode].models)
        # the crop model knows the class: its mask is exactly that class's voxels
        labels = np.arange(len(source.classes) + 1, dtype=np.uint8).reshape(-1, 1, 1)
        mask = class_mask(labels, source, [name])
        assert mask.sum() == 1 and labels[mask][0] == source.class_id(name), name


def test_classes_the_crop_model_misses_give_empty_masks(use_home, tmp_path):
    """A class the (random) 6 mm model does not find anywhere: every requested file exists and is empty."""
    from totalseg.load.nifti import load_nifti
    from totalseg.run.pipeline import predict
    from totalseg.run.predictor import Predictor

    image = load_nifti(REF / "example_ct_sm.nii.gz").volume
    total = get_task("total")
    step = plan_run(total, Options(roi_subset=("liver",))).crop.source
    assert [m.id for m in step.models] == list(total.modes["fastest"].models)
    found = predict(image, step, Predictor("cpu")).labels
    missing = [n for k, n in total.classes.items() if not (found == k).any()]
    assert missing, "the crop model found every class; pick another input"
    names = missing[:2]
    out = tmp_path / "seg"
    assert main(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "-rs", *names, "-d", "cpu", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.nii.gz" for n in names)
    ref = nib.load(REF / "example_ct_sm.nii.gz")
    for n in names:
        img = nib.load(out / f"{n}.nii.gz")
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
        assert not np.asanyarray(img.dataobj).any()
