"""One run as three steps a reader can follow: its setup (:func:`totalseg.run.setup.prepare`), the models
run on a predictor (:func:`predict`), and the outputs written (:func:`totalseg.run.outputs.write_outputs`).

The predictor is anything with ``model_labels``, ``device`` and ``engine`` (a
:class:`totalseg.run.predictor.Predictor`, or a cohort's shared view of one); this module never makes one.
"""
from __future__ import annotations

import sys
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Callable

from totalseg.errors import UserError
from totalseg.load.dicom import load_dicom
from totalseg.load.image_checks import cut_off_warning, image_warnings
from totalseg.load.nifti import load_nifti
from totalseg.notice import Notice, notice_printer
from totalseg.run.options import RunOptions, run_engine
from totalseg.run.outputs import write_outputs
from totalseg.run.pipeline import segment
from totalseg.run.setup import RunSetup, prepare


def run(input, output, values: RunOptions, predictor=None,
        new_predictor: Callable[[Notice], AbstractContextManager] | None = None, setup_changes=None):
    """Segment ``input`` as ``values`` say, on ``predictor`` (or on one made by ``new_predictor`` once the
    run's checks have passed). ``setup_changes``: fields of the setup to replace (a cohort names its case
    folder in the run report)."""
    started = time.time()
    say, tell = notice_printer(values.quiet), notice_printer(not values.verbose)
    engine = run_engine(values, predictor)
    setup = prepare(input, output, values, say)
    if setup_changes:
        from dataclasses import replace

        setup = replace(setup, **setup_changes)
    warned: list[str] = []  # for the run report
    image = _load_image(setup, say, warned)
    say(f"Predicting {setup.task.name}{' (fast)' if values.fast else ''}{' (fastest)' if values.fastest else ''}...")
    step = time.time()
    owner = nullcontext(predictor) if predictor is not None else new_predictor(say)
    with owner as labeller:
        result = predict(setup, image, labeller, say, values.debug)
        ran_on = labeller.device
    tell(f"  predicted on {ran_on} in {time.time() - step:.2f}s")
    cut_off = cut_off_warning(result.labels, result.class_map)  # said where it matters: the statistics
    if setup.statistics is not None:
        _warn(say, cut_off, warned)
    else:
        warned.extend(cut_off)
    return write_outputs(setup, image, result, ran_on, engine, started, warned, say, tell)


def predict(setup: RunSetup, image, labeller, say: Notice, debug: bool = False):
    """The plan carried out on the image; ``debug`` names the input and task when it fails unexpectedly."""
    try:
        return segment(image.volume, setup.plan, labeller, progress=say, blobs_mm3=setup.blobs_mm3,
                       one_hot=setup.one_hot, header_zooms=image.header.get_zooms()[:3],
                       resample_threads=setup.resample_threads, probabilities=setup.probabilities is not None,
                       cropped_logits=setup.cropped_logits)
    except UserError:
        raise
    except Exception:
        if debug:
            print(f"Error during prediction for input: {setup.input}, task: {setup.task.name}", file=sys.stderr,
                  flush=True)
        raise


def _load_image(setup: RunSetup, say: Notice, warned: list[str]):
    """The input image; the reader's warnings, then the input checks', are said and kept in ``warned``."""
    warn = lambda m: _warn(say, [m], warned)  # noqa: E731
    if setup.series is not None:
        image = load_dicom(setup.input, warn=warn, series=setup.series)
    else:
        image = load_nifti(setup.input, warn=warn)
    _warn(say, image_warnings(image.volume, setup.task.modality, setup.task.name), warned)  # never change outputs
    return image


def _warn(say: Notice, lines: list[str], kept: list[str]) -> None:
    """Say each warning (one line, none with -q) and keep it for the run report."""
    for line in lines:
        say(f"WARNING: {line}")
    kept.extend(lines)
