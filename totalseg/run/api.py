"""The Python API: the official function's name, signature and defaults, as a thin layer over the option
table (:mod:`totalseg.run.options`) and the run's steps (:mod:`totalseg.run.steps`)."""
from __future__ import annotations

from typing import Sequence

from totalseg.run.options import RunOptions, collect
from totalseg.run.steps import run


def totalsegmentator(input, output=None, ml: bool = False, nr_thr_resamp: int | None = None, nr_thr_saving: int = 6,
                     fast: bool = False, nora_tag: str = "None", preview: bool = False, task: str = "total",
                     roi_subset: Sequence[str] | None = None, statistics=False, radiomics: bool = False,
                     crop_path=None, body_seg: bool = False, force_split: bool = False,
                     output_type="nifti", quiet: bool = False, verbose: bool = False, test: int = 0,
                     skip_saving: bool = False, device: str | None = None, license_number: str | None = None,
                     statistics_exclude_masks_at_border: bool = True, no_derived_masks: bool = False,
                     v1_order: bool = False, fastest: bool = False, roi_subset_robust=None,
                     stats_aggregation: str = "mean", remove_small_blobs=False,
                     statistics_normalized_intensities: bool = False, robust_crop: bool = False,
                     higher_order_resampling_LEGACY: bool = False, higher_order_resampling: bool = False,
                     save_probabilities=None, debug: bool = False, report=None,
                     statistics_extra: bool = False, save_lowres: bool = False, resampling_order: int = 1,
                     plans: str = "nnUNetPlans", model_size: str = "big", series_uid: str | None = None,
                     engine: str | None = None, predictor=None, **more_options):
    """Segment ``input`` (a NIfTI path or a nibabel image, a DICOM folder, zip or file) with ``task``.

    Writes per-class masks into the folder ``output`` (or one multilabel file with ``ml``) and returns
    the label image (uint8, input geometry, label table attached); with ``statistics`` it returns
    ``(image, statistics)``. ``device`` (default gpu) and ``engine`` (default exact, or
    ``$TOTALSEG_ENGINE``) choose where and how the networks run; a :class:`totalseg.Predictor` passed
    as ``predictor`` brings its own (and keeps its models loaded for the next call). Every option is an entry
    of the option table; ``more_options`` takes those added after the official signature.
    """
    given = {name: value for name, value in locals().items()
             if name not in ("input", "output", "predictor", "more_options")}
    values = collect({**given, **more_options})
    return run(input, output, values, predictor, new_predictor=lambda say: _own_predictor(values, say))


def _own_predictor(values: RunOptions, say):
    """The run's own predictor, when the caller brings none (closed when the run ends)."""
    from totalseg.run.engine import chosen_engine
    from totalseg.run.predictor import Predictor

    return Predictor(values.device or "gpu", chosen_engine(values.engine), notice=say,
                     progress_bars=False if values.quiet else None)


def check_options(options: dict) -> None:
    """The checks of :func:`totalsegmentator` that need no input, for options given as a mapping."""
    collect(options)
