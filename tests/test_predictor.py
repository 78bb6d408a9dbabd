"""The predictor and the run plan: one plan for install and run, the device path, torch's settings."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import REF
from totalseg.errors import UserError
from totalseg.run.pipeline import segment
from totalseg.run.plan import Options, plan_run
from totalseg.registry import get_task, task_names
from totalseg.volume import Volume


class Recorder:
    """A labeller that records the models asked for and answers with every label of the model
    (cycling through the voxels), so every crop finds its classes and every later step runs."""

    def __init__(self):
        self.loaded: list[int] = []

    def model_labels(self, model, folds, data, spacing, step, progress=None):
        self.loaded.append(model.id)
        n = len(model.classes) + 1
        return (np.arange(data.size) % n).astype(np.uint8).reshape(data.shape)


def _unique(ids):
    return list(dict.fromkeys(ids))


def _variants(task):
    modes = [Options()]
    if not task.disallow_fast:
        modes += [Options(fast=True), Options(fastest=True)]
    for base in modes:
        yield base
        yield Options(**{**base.__dict__, "robust_crop": True})
        yield Options(**{**base.__dict__, "body_seg": True})
        if task.name in ("total", "total_mr"):
            yield Options(**{**base.__dict__, "roi_subset": ("liver", "brain")})
            yield Options(**{**base.__dict__, "roi_subset": ("liver",), "robust_crop": True})


@pytest.mark.parametrize("task_name", task_names())
def test_models_loaded_are_the_models_planned(task_name):
    """Every task × mode × (-rs, -rc, -bs): the models the run loads are exactly the planned ones,
    in the planned order (what is installed up front is what runs)."""
    task = get_task(task_name)
    image = Volume(np.zeros((24, 24, 24), dtype=np.int16), np.diag([1.5, 1.5, 1.5, 1.0]))
    for options in _variants(task):
        plan = plan_run(task, options)
        recorder = Recorder()
        result = segment(image, plan, recorder)
        assert _unique(recorder.loaded) == [m.id for m in plan.models()], (task_name, options)
        assert result.labels.shape == image.shape


def test_teeth_robust_crop_plans_the_model_it_runs():
    """The crop task of teeth keeps -rc: its rough crop model is the 3 mm one, in plan and run."""
    plan = plan_run(get_task("teeth"), Options(robust_crop=True))
    crop_run = plan.crop.source
    assert [m.id for m in crop_run.crop.source.models] == [297]
    assert 297 in [m.id for m in plan.models()] and 298 not in [m.id for m in plan.models()]


def test_roi_subset_on_other_tasks_is_refused():
    with pytest.raises(UserError, match="roi_subset works only"):
        plan_run(get_task("body"), Options(roi_subset=("body_trunc",)))


def _device_audit():
    """A torch function mode that records every op whose tensors live on more than one device
    (moves between devices excepted); torch itself does not refuse ``cpu_tensor += meta_tensor``."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    moves = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.copy_,
             torch._has_compatible_shallow_copy_type}  # Module.to() moving parameters

    class Audit(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.mixed: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func not in moves:
                tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
                if len({t.device.type for t in tensors}) > 1:
                    self.mixed.append(getattr(func, "__name__", str(func)))
            return out

    return Audit()


def _small_image(crop: bool = False):
    from totalseg.load.nifti import load_nifti

    volume = load_nifti(REF / "example_ct_sm.nii.gz").volume
    # a corner of it keeps host-side resampling to 0.4 mm (cerebral_bleed) short
    return volume.with_data(np.ascontiguousarray(volume.data[40:72, 30:62, 10:20])) if crop else volume


@pytest.mark.parametrize("task_name, options", [("body", Options(fast=True)), ("total", Options(fast=True)),
                                                ("cerebral_bleed", Options())])
def test_device_path_runs_on_meta_without_mixing_devices(use_home, task_name, options):
    """Every model step of a plan with an explicit device (meta: shapes only) through the same code as
    a GPU (streamed labels, and whole logits for nnU-Net's own resampling): every tensor of the sliding
    window lives on the device; labels come back as zeros."""
    from totalseg.run.pipeline import predict
    from totalseg.run.predictor import Predictor

    predictor = Predictor("meta")
    plan = plan_run(get_task(task_name), options)
    image = _small_image(crop=True)
    with _device_audit() as audit:
        for step in plan.steps():
            labels = predict(image, step, predictor).labels
            assert labels.shape == image.shape and not labels.any()
        assert segment(image, plan, predictor).labels.shape == image.shape
    assert audit.mixed == []
    assert predictor.loads[:len(plan.models())] == [m.id for m in plan.models()]


def test_meta_audit_catches_sums_kept_on_the_host(use_home, monkeypatch):
    """The audit above can fail: sums built on the CPU while the network runs on the device."""
    from totalseg.predict import sliding_window
    from totalseg.run.predictor import Predictor

    real = sliding_window._streamed_labels
    monkeypatch.setattr(sliding_window, "_streamed_labels",
                        lambda runner, data, patch, step, heads, dtype, results: real(
                            runner, data, patch, step, heads, dtype, "cpu"))
    audit = _device_audit()
    with pytest.raises((NotImplementedError, RuntimeError)):  # the network's output cannot reach host sums
        with audit:
            segment(_small_image(), plan_run(get_task("body"), Options(fast=True)), Predictor("meta"))


def test_predictor_restores_torch_settings(use_home):
    import torch

    from totalseg.run.predictor import Predictor, flushing_denormals

    threads = torch.get_num_threads()
    cudnn = torch.backends.cudnn
    image = _small_image()
    plan = plan_run(get_task("body"), Options(fast=True))
    try:
        for flush, caller_threads in ((False, 1), (True, 2)):
            torch.set_num_threads(caller_threads)
            torch.set_flush_denormal(flush)
            segment(image, plan, Predictor("cpu", threads=2))
            assert torch.get_num_threads() == caller_threads
            assert flushing_denormals() == flush
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


def test_predictor_pins_cudnn_on_cuda_and_restores_the_callers_flags(use_home, monkeypatch):
    """On CUDA the networks run with cuDNN deterministic and benchmark mode off; the caller's flags come back."""
    import torch

    from totalseg.predict import nnunet
    from totalseg.run.predictor import Predictor

    cudnn = torch.backends.cudnn
    seen = []
    monkeypatch.setattr(nnunet, "segment", lambda *args: seen.append((cudnn.benchmark, cudnn.deterministic))
                        or np.zeros(args[0].shape, dtype=np.uint8))
    before = (cudnn.benchmark, cudnn.deterministic)
    predictor = Predictor("meta")
    predictor.device = "cuda:0"  # the settings only; the fake nnunet.segment never touches a device
    predictor._entry = lambda model, folds: SimpleNamespace(plans=None, runner=None, release_memory=lambda: None)
    try:
        for caller in ((True, False), (False, False)):
            cudnn.benchmark, cudnn.deterministic = caller
            segment(_small_image(), plan_run(get_task("body"), Options(fast=True)), predictor)
            assert (cudnn.benchmark, cudnn.deterministic) == caller
    finally:
        cudnn.benchmark, cudnn.deterministic = before
    assert seen and all(flags == (False, True) for flags in seen)


def test_predictor_keeps_models_loaded_across_images(use_home):
    from totalseg.run.predictor import Predictor

    image = _small_image()
    plan = plan_run(get_task("total"), Options(roi_subset=("liver",)))
    with Predictor("cpu", keep_models=2) as predictor:
        first = segment(image, plan, predictor).labels
        second = segment(image, plan, predictor).labels
    assert predictor.loads == [298, 291]  # loaded once for both images
    assert np.array_equal(first, second)


def test_predictor_segment_matches_the_function(use_home, tmp_path):
    """Predictor.segment is totalsegmentator() with the predictor's models: same voxels."""
    from totalseg import Predictor, totalsegmentator

    a = totalsegmentator(REF / "example_ct_sm.nii.gz", None, fast=True, device="cpu", quiet=True)
    with Predictor("cpu") as predictor:
        b = predictor.segment(REF / "example_ct_sm.nii.gz", fast=True, quiet=True)
        with pytest.raises(UserError, match="predictor"):
            predictor.segment(REF / "example_ct_sm.nii.gz", fast=True, device="cpu")
    assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))


def test_unknown_engine_is_refused(use_home, tmp_path, monkeypatch):
    from totalseg.cli.totalsegmentator import main

    monkeypatch.setenv("TOTALSEG_ENGINE", "turbo")
    out = tmp_path / "o.nii.gz"
    assert main(["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "--ml", "-d", "cpu", "-q"]) == 1
    assert not out.exists()


def test_fast_engine_on_gpu_request_is_refused_when_cuda_is_present(monkeypatch):
    import torch

    from totalseg.run.predictor import Predictor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="engine fast runs on the CPU"):
        Predictor("gpu", engine="fast")


def test_progress_bar_counts_every_tile(use_home):
    """A bar per model run: its total is the model's tile count and it ends full."""
    from totalseg.run.pipeline import predict
    from totalseg.run.predictor import Predictor

    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.n = total, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def update(self, n):
            self.n += n

    predictor = Predictor("cpu", progress_bars=True)
    plan = plan_run(get_task("total"), Options(fast=True))
    entry = predictor._entry(plan.main.models[0], plan.task.folds)
    from dataclasses import replace
    entry.runner = replace(entry.runner, progress_bar=Bar)
    predict(_small_image(), plan.main, predictor)
    assert len(bars) == 1 and bars[0].total > 1 and bars[0].n == bars[0].total


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_fast_engine_end_to_end(use_home, tmp_path, monkeypatch, how):
    """--engine fast (or TOTALSEG_ENGINE=fast) runs the networks on OpenVINO: nearly the official masks
    (not bitwise: the agreement with the stored official output is measured), converted models cached
    in the home's engine_cache, never in the model folders."""
    pytest.importorskip("totalseg.predict.fast_engine")
    from totalseg.cli.totalsegmentator import main
    from totalseg.predict.fast_engine import available, default_precision

    if not available():
        pytest.skip("openvino is not installed (pip install -e '.[fast]')")
    import nibabel as nib

    from conftest import ORACLE

    out = tmp_path / "fast.nii.gz"
    args = ["-i", str(REF / "example_ct_sm.nii.gz"), "-o", str(out), "--fast", "--ml", "-d", "cpu", "-q"]
    if how == "flag":
        args += ["--engine", "fast"]
    else:
        monkeypatch.setenv("TOTALSEG_ENGINE", "fast")
    assert main(args) == 0
    ours = np.asanyarray(nib.load(out).dataobj)
    official = np.asanyarray(nib.load(ORACLE / "fast_ml.nii.gz").dataobj)
    # f32 OpenVINO: 99.9997 % equal; bf16 (the default where the CPU has AMX): 99.70 % on these random networks
    assert (ours == official).mean() >= (0.999 if default_precision() == "f32" else 0.995)
    assert list(use_home.glob("engine_cache/Dataset297_*/*/*.xml"))
    assert not list((use_home / "nnunet").rglob("*.xml"))


def test_fast_networks_release_their_buffers_after_each_run(use_home, monkeypatch):
    """A kept model's OpenVINO buffers are freed when its run ends (a cohort keeps every model of a case
    loaded), also when the run fails; the next run uses them again."""
    from totalseg.predict import fast_engine
    from totalseg.run.predictor import Predictor
    from totalseg.registry import get_model

    if not fast_engine.available():
        pytest.skip("openvino is not installed (pip install -e '.[fast]')")
    released: list[int] = []
    monkeypatch.setattr(fast_engine.FastNetwork, "release_memory", lambda self: released.append(id(self)))
    model = get_model(297)
    data = np.zeros((40, 40, 40), dtype=np.float32)
    with Predictor("cpu", "fast", keep_models=2, progress_bars=False) as predictor:
        predictor.model_labels(model, (0,), data, (3.0, 3.0, 3.0), 0.5)
        assert len(released) == 1
        predictor.model_labels(model, (0,), data, (3.0, 3.0, 3.0), 0.5)
        assert len(released) == 2 and predictor.loads == [297]
        monkeypatch.setattr("totalseg.predict.nnunet.segment", lambda *a: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            predictor.model_labels(model, (0,), data, (3.0, 3.0, 3.0), 0.5)
        assert len(released) == 3 and len(set(released)) == 1


@pytest.mark.parametrize("task_name", ["vertebrae_pp_refined", "heartchambers_highres"])
def test_input_grid_steps_sized_by_the_header_pixdim(task_name, monkeypatch):
    """The official sizes the vertebrae refinement and remove_outside by the input header's pixdim, all else by
    the affine's column lengths (measured: vertebrae_pp_refined on example_ct_sm with pixdim 1 mm and a 3 mm
    affine differs from pixdim 3 mm in 479 voxels, and ours equals the official's). Unusable pixdim (zero):
    the column lengths."""
    from totalseg.run import pipeline

    seen: list = []
    monkeypatch.setattr(pipeline.postprocess, "refine_vertebrae",
                        lambda labels, bodies, classes, spacing: seen.append(tuple(spacing)) or labels)
    monkeypatch.setattr(pipeline.postprocess, "remove_outside",
                        lambda labels, mask, distance: seen.append(distance))
    image = Volume(np.zeros((24, 24, 24), dtype=np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    plan = plan_run(get_task(task_name), Options())
    for pixdim in [(1.0, 1.0, 1.0), None, (0.0, 0.0, 0.0)]:
        segment(image, plan, Recorder(), header_zooms=pixdim)
    if task_name == "vertebrae_pp_refined":
        assert seen == [(1.0, 1.0, 1.0), (3.0, 3.0, 3.0), (3.0, 3.0, 3.0)]
    else:
        assert seen == [10.0, 10.0 / 3.0, 10.0 / 3.0]


def test_progress_function_sees_every_tile_of_each_model_run(use_home, monkeypatch):
    """Predictor(progress=...) is called with (model, done, total) from 0 to the run's tile count (as many tiles
    as the sliding window planned), without bars, for each model run; None again stops the calls."""
    import totalseg.predict.sliding_window as sw
    from totalseg.run.predictor import Predictor

    planned, calls = [], []
    grid = sw.tile_grid

    def counted_grid(*args):
        tiles = grid(*args)
        planned.append(len(tiles))
        return tiles

    monkeypatch.setattr(sw, "tile_grid", counted_grid)
    image = _small_image()
    plan = plan_run(get_task("total"), Options(fast=True, roi_subset=("liver",)))  # 6 mm crop model, then 3 mm
    predictor = Predictor("cpu", progress_bars=False, progress=lambda *call: calls.append(call))
    segment(image, plan, predictor)
    runs = [[c for c in calls if c[0] == folder] for folder in dict.fromkeys(c[0] for c in calls)]
    assert len(runs) == 2 and [len(run) - 1 for run in runs] == planned and min(planned) >= 1
    for run, total in zip(runs, planned):
        assert [c[1:] for c in run] == [(done, total) for done in range(total + 1)]
    predictor.progress, calls[:] = None, []
    segment(image, plan, predictor)
    assert calls == []
