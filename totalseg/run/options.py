"""The option table: every option of a run, declared once.

Each :class:`Option` says what the option is called (keyword and flags), its type and default, what it does,
where it takes effect and which outputs it changes, whether a cohort passes it to each case, and how one value
is checked. From the table come the ``TotalSegmentator`` parser (:func:`add_arguments`), the keyword options a
command line gives (:func:`from_command_line`), the cohort's pass-through (:func:`per_case_names`), the API's
checks (:func:`collect`), the run report's option fields (:func:`report_fields`) and the README's table
(:func:`markdown_table`). Adding an option is one entry here plus its effect where its stage runs.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from totalseg.errors import UserError
from totalseg.run.engine import ENGINES, check_engine, chosen_engine, default_threads

# Where an option takes effect (the README's column), in the order a run reaches them.
STAGES = {"input": "reading the input", "plan": "which models run", "predict": "running the models",
          "write": "the label outputs", "statistics": "statistics and extra outputs", "run": "the run itself"}


@dataclass(frozen=True)
class Option:
    """One option of a run."""

    name: str  # the keyword of totalsegmentator()
    flags: tuple[str, ...]  # command-line flags; () for API-only options
    default: Any
    help: str
    stage: str  # a key of STAGES
    changes: str = ""  # the outputs it changes, for the README
    cohort: bool = True  # totalseg_batch passes it to every case
    cli: Mapping[str, Any] = field(default_factory=dict)  # argparse extras: action, nargs, type, const, ...
    cli_dest: str | None = None  # the parser's name when it is not ``name`` (-sii)
    from_cli: Callable[[Any], Any] | None = None  # the parser's value -> the keyword's value
    check: Callable[[Any], Any] | None = None  # one value checked (UserError) and normalised
    refused: str | None = None  # why totalseg cannot honour it (refused when set to a non-default value)
    report_key: str | None = None  # its field in the run report (-rp)
    path_or_flag: bool = False  # a path, or True for its files beside the outputs (a cohort: only True)

    @property
    def dest(self) -> str:
        return self.cli_dest or self.name


def _positive_float(value: str) -> float:
    """-rmb's size, as the official parses it."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"Invalid number: '{value}'.") from None
    if number <= 0:
        raise argparse.ArgumentTypeError("Value must be greater than 0.")
    return number


def _blob_size(value):
    """None (off), 200 mm³ for True (the official default) or the size given; 0 means off, as officially."""
    if value is None or value is False or value == 0:
        return None
    if value is True:
        return 200
    if isinstance(value, str) or not value > 0:
        raise UserError(f"--remove_small_blobs takes a size in mm3 greater than 0 (got {value!r})")
    return value


def output_types(value) -> list[str]:
    """``-ot``: the output types asked for (a name, a comma-separated list or a list; "dicom" is the RT
    structure set), each once."""
    types = [value] if isinstance(value, str) else list(value or ["nifti"])
    types = [t.strip() for item in types for t in str(item).split(",") if t.strip()]
    types = ["dicom_rtstruct" if t == "dicom" else t for t in types]
    for t in types:
        if t not in ("nifti", "dicom_rtstruct", "dicom_seg"):
            raise UserError(f"unknown output type '{t}'; use nifti, dicom_rtstruct or dicom_seg")
    return list(dict.fromkeys(types))


def _at_least_one(message: str) -> Callable[[Any], Any]:
    """A check that a thread count (None: the default) is 1 or more; ``message`` has a {} for the value."""
    def check(value):
        if value is not None and int(value) < 1:
            raise UserError(message.format(value))
        return value
    return check


def _resampling_order(value) -> int:
    if not 0 <= int(value) <= 5:
        raise UserError(f"--resampling_order must be 0..5 (got {value})")
    return int(value)


def _aggregation(value: str) -> str:
    if value not in ("mean", "median"):
        raise UserError("--stats_aggregation must be mean or median")
    return value


def _roi_list(value):
    if value is not None and not isinstance(value, (list, tuple)):
        raise UserError("roi_subset must be a list of class names")
    return value


def _device(value):
    if value is not None:
        from totalseg.device import check_device

        check_device(value)
    return value


def _model_size(value: str) -> str:
    if value not in ("big", "small"):
        raise UserError("model_size must be 'big' or 'small'.")
    return value


def _plans(value: str) -> str:
    if value != "nnUNetPlans":
        raise UserError(f"plans '{value}' is not supported by totalseg: every model runs with the plans of its "
                        "weights folder (nnUNetPlans); run without it")
    return value


def _task(name: str) -> str:
    from totalseg.registry import get_task

    get_task(name)  # an unknown task: the registry's one-line error
    return name


def _engine(value):
    return None if value is None else check_engine(value)


_Opt = Option
# The official signature's order first (totalsegmentator() keeps it), then totalseg's own options.
OPTIONS: tuple[Option, ...] = (
    _Opt("ml", ("-ml", "--ml"), False, "write one multilabel file instead of one file per class", "write",
         "the label outputs", cli={"action": "store_true"}, report_key="multilabel"),
    _Opt("nr_thr_resamp", ("-nr", "--nr_thr_resamp"), None,
         "threads for resampling (default: all cores; the result is the same with any number)", "predict",
         cli={"type": int}, check=_at_least_one("--nr_thr_resamp must be 1 or more (got {})")),
    _Opt("nr_thr_saving", ("-ns", "--nr_thr_saving"), 6, "threads that write the per-class files (default 6)",
         "write", cli={"type": int}, check=_at_least_one("--nr_thr_saving must be at least 1 (got {})")),
    _Opt("fast", ("-f", "--fast"), False, "3 mm model: faster, less accurate", "plan", "every output",
         cli={"action": "store_true"}, report_key="fast"),
    _Opt("nora_tag", ("-t", "--nora_tag"), "None", "official: tag the outputs in a local NORA; refused here", "run",
         refused="--nora_tag calls a local NORA installation (/opt/nora/src/node/nora), which totalseg does not "
                 "do; run without it"),
    _Opt("preview", ("-p", "--preview"), False, "write a preview png", "statistics", "preview_<task>.png",
         cli={"action": "store_true"}),
    _Opt("task", ("-ta", "--task"), "total", "task to run (see --list-tasks)", "plan", "every output",
         check=_task),
    _Opt("roi_subset", ("-rs", "--roi_subset"), None, "only these classes (crop first with the low-resolution model)",
         "plan", "every output", cli={"nargs": "+"}, check=_roi_list, report_key="roi_subset"),
    _Opt("statistics", ("-s", "--statistics"), False,
         "write statistics.json (volume in mm3, mean intensity per class), optionally to this path", "statistics",
         "statistics.json", cli={"nargs": "?", "const": True}, path_or_flag=True),
    _Opt("radiomics", ("-r", "--radiomics"), False, "radiomics features per class", "statistics",
         "statistics_radiomics.json", cli={"action": "store_true"}),
    _Opt("crop_path", ("-cp", "--crop_path"), None, "official legacy option; no effect (a notice says so)", "run",
         cli={"type": Path}),
    _Opt("body_seg", ("-bs", "--body_seg"), False, "crop to the body first (body 6 mm model)", "plan", "every output",
         cli={"action": "store_true"}),
    _Opt("force_split", ("-fs", "--force_split"), False, "process the image in three chunks along z", "plan",
         "every output", cli={"action": "store_true"}),
    _Opt("output_type", ("-ot", "--output_type"), "nifti",
         "nifti, dicom_seg and/or dicom_rtstruct (dicom = dicom_rtstruct); DICOM outputs need DICOM input",
         "write", "the label outputs", cli={"nargs": "+", "default": ["nifti"]}, check=output_types,
         report_key="output_type"),
    _Opt("quiet", ("-q", "--quiet"), False, "print nothing but errors", "run", cohort=False,
         cli={"action": "store_true"}),
    _Opt("verbose", ("-v", "--verbose"), False, "more output (steps and timings)", "run", cohort=False,
         cli={"action": "store_true"}),
    _Opt("test", ("--test",), 0, "official test-suite switch; anything but 0 is refused here", "run",
         cli={"metavar": "0|1|3", "choices": [0, 1, 3], "type": int},
         refused="--test is internal to the official test suite (it copies the suite's reference segmentation "
                 "instead of predicting); run without it"),
    _Opt("skip_saving", ("-ss", "--skip_saving"), False, "do not write segmentations (statistics only)", "write",
         "the label outputs", cli={"action": "store_true"}),
    _Opt("device", ("-d", "--device"), None, "gpu, gpu:N, cpu or mps (gpu without CUDA falls back to cpu)",
         "predict", cohort=False, cli={"default": "gpu"}, check=_device),
    _Opt("license_number", ("-l", "--license_number"), None,
         "licence number for the licensed tasks (stored in config.json)", "run"),
    _Opt("statistics_exclude_masks_at_border", ("-sii", "--stats_include_incomplete"), True,
         "statistics also for masks touching the image border", "statistics", "statistics.json",
         cli={"action": "store_true"}, cli_dest="stats_include_incomplete", from_cli=lambda include: not include),
    _Opt("no_derived_masks", ("-ndm", "--no_derived_masks"), False, "body task: no body/skin masks", "write",
         "the label outputs", cli={"action": "store_true"}),
    _Opt("v1_order", ("-v1o", "--v1_order"), False,
         "task total, multilabel output: classes in the v1 order (104 classes); v2-only classes removed", "write",
         "the multilabel output", cli={"action": "store_true"}),
    _Opt("fastest", ("-ff", "--fastest"), False, "6 mm model: fastest, least accurate", "plan", "every output",
         cli={"action": "store_true"}, report_key="fastest"),
    _Opt("roi_subset_robust", ("-rsr", "--roi_subset_robust"), None, "like -rs, cropping with the 3 mm model",
         "plan", "every output", cli={"nargs": "+"}, check=_roi_list),
    _Opt("stats_aggregation", ("-sa", "--stats_aggregation"), "mean", "intensity aggregation", "statistics",
         "statistics.json", cli={"choices": ["mean", "median"]}, check=_aggregation),
    _Opt("remove_small_blobs", ("-rmb", "--remove_small_blobs"), False,
         "remove connected components of at most this size (mm3, default 200) from every class", "predict",
         "every output", cli={"nargs": "?", "type": _positive_float, "const": 200.0, "metavar": "mm3"},
         check=_blob_size),
    _Opt("statistics_normalized_intensities", (), False,
         "statistics of the intensities min-max normalised over the image (as the official; used by "
         "totalseg_get_modality -n)", "statistics", "statistics.json"),
    _Opt("robust_crop", ("-rc", "--robust_crop"), False, "crop with the 3 mm model instead of the 6 mm one", "plan",
         "every output", cli={"action": "store_true"}),
    _Opt("higher_order_resampling_LEGACY", ("--higher_order_resampling_LEGACY", "--high_order_resampling_LEGACY"),
         False, "upsample the labels one-hot with order 1 (smoother masks) instead of nearest-neighbour", "predict",
         "every output", cli={"action": "store_true"}),
    _Opt("higher_order_resampling", ("-ho", "--higher_order_resampling", "--high_order_resampling"), False,
         "nnU-Net resamples the image to the model's spacing itself (order 3) and exports with cropped-logits "
         "resampling (order 1, each class in its box); drops -sl", "predict", "every output",
         cli={"action": "store_true"}),
    _Opt("save_probabilities", ("-sp", "--save_probabilities"), None,
         "save nnU-Net's probabilities (npz, array 'probabilities', model grid, z y x) to this path and its "
         "properties beside it (.pkl); without a path (a cohort): probabilities.npz beside the outputs", "predict",
         "the npz and pkl files of -sp", cli={"nargs": "?", "const": True, "metavar": "PATH"}, path_or_flag=True),
    _Opt("debug", ("--debug",), False, "on an unexpected error, print the input path and task", "run", cohort=False,
         cli={"action": "store_true"}),
    _Opt("report", ("-rp", "--report"), None,
         "write a JSON run report (versions, device, task, classes, runtime, output files) to this path", "statistics",
         "the run report", cohort=False, cli={"type": Path, "metavar": "filepath"}),
    _Opt("statistics_extra", ("-sx", "--statistics_extra"), False,
         "more statistics: voxels, std, min, max, centroid, bbox", "statistics", "statistics.json",
         cli={"action": "store_true"}),
    _Opt("save_lowres", ("-sl", "--save_lowres"), False,
         "with -f/-ff save the segmentation at the model resolution (3 or 6 mm), not upsampled; nifti only, not "
         "with cropping tasks, -rs or -bs", "write", "the label outputs", cli={"action": "store_true"},
         report_key="save_lowres"),
    _Opt("resampling_order", ("-ro", "--resampling_order"), 1, "spline order for resampling the input (default 1)",
         "predict", "every output", cli={"type": int, "choices": range(6), "metavar": "{0..5}"},
         check=_resampling_order),
    _Opt("plans", (), "nnUNetPlans", "official: the nnU-Net plans name; only nnUNetPlans here", "plan",
         check=_plans),
    _Opt("model_size", ("-ms", "--model_size"), "big",
         "official: small only for task total_v3 (not in this registry); big (default) here", "plan",
         cli={"choices": ["big", "small"]}, check=_model_size),
    _Opt("series_uid", ("--series_uid",), None,
         "DICOM input: the SeriesInstanceUID to segment (default: largest CT/MR series)", "input", cohort=False),
    _Opt("engine", ("--engine",), None,
         "exact (default; the official arithmetic, same masks bit for bit), fast (CPU: OpenVINO, bf16 where the "
         "CPU has it; a few voxels may differ) or int8 (CPU: OpenVINO with 8-bit convolutions, calibrated once per "
         "model; more voxels may differ). Default: $TOTALSEG_ENGINE or exact", "predict", cohort=False,
         cli={"choices": list(ENGINES)}, check=_engine),
)
# The run report's option fields, in the official manifest's order.
REPORT_ORDER = ("fast", "fastest", "save_lowres", "multilabel", "output_type", "roi_subset")


def table(options: tuple[Option, ...] | None = None) -> dict[str, Option]:
    """The options by keyword (``options``: another table, e.g. in a test)."""
    return {o.name: o for o in (OPTIONS if options is None else options)}


class RunOptions(Mapping):
    """The checked options of one run: read as attributes (``values.fast``) or as a mapping."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("RunOptions is frozen; use replace()")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def replace(self, **changes: Any) -> "RunOptions":
        return RunOptions({**self._values, **changes})


def collect(given: Mapping[str, Any], options: tuple[Option, ...] | None = None) -> RunOptions:
    """The options of a run, checked before any work: unknown names, refused options and malformed values are
    one-line :class:`UserError` s; missing ones take their defaults."""
    known = table(options)
    unknown = [name for name in given if name not in known]
    if unknown:
        raise UserError(f"unknown option '{unknown[0]}'; see totalsegmentator()'s options (TotalSegmentator -h)")
    values = {name: given.get(name, o.default) for name, o in known.items()}
    for name, o in known.items():
        if o.refused and values[name] not in (o.default, None, False, 0):
            raise UserError(o.refused)
    for name, o in known.items():
        if o.check is not None:
            values[name] = o.check(values[name])
    return _combined(RunOptions(values))


def _combined(values: RunOptions) -> RunOptions:
    """The checks and normalisations that involve several options."""
    if values.model_size == "small" and values.task != "total_v3":
        raise UserError("model_size='small' is currently only supported for task 'total_v3'.")
    if values.save_lowres and not (values.fast or values.fastest):
        raise UserError("save_lowres only works together with fast or fastest mode.")
    changes: dict[str, Any] = {"nr_thr_resamp": values.nr_thr_resamp or default_threads()}
    if values.roi_subset_robust:  # the official legacy spelling of -rs with -rc
        changes.update(roi_subset=values.roi_subset_robust, robust_crop=True)
    return values.replace(**changes)


def check_v1_order(values: RunOptions, applies: bool) -> None:
    """-v1o with -rs and the LEGACY upsampling: the official tool filters v2 labels by v1 ids there."""
    if applies and values.roi_subset and values.higher_order_resampling_LEGACY:
        raise UserError("--higher_order_resampling_LEGACY with --v1_order and --roi_subset is not supported (the "
                        "official tool filters v2 labels by v1 ids there); drop one of them")


def check_save_lowres(values: RunOptions, plan, types: list[str], ml: bool) -> None:
    """``--save_lowres``: the official tool's refusals, plus those whose outputs it cannot make."""
    if not values.save_lowres:
        return
    if types != ["nifti"]:
        raise UserError("save_lowres only supports nifti output.")
    if plan.crop is not None or plan.only_classes or plan.refine is not None:
        raise UserError("save_lowres is not supported together with cropping, roi_subset, body_seg, or cascade.")
    if values.radiomics:
        raise UserError("--radiomics needs masks on the input grid; run it without --save_lowres")
    if plan.task.postprocess == "body" and not ml and not values.no_derived_masks:
        raise UserError("--save_lowres: the body task's derived masks (body, skin) need the input grid; "
                        "add -ndm (or use --ml)")


def run_engine(values: RunOptions, predictor) -> str | None:
    """The engine a run uses: the predictor's own (which a named engine or device must match), else the option,
    ``$TOTALSEG_ENGINE`` or exact."""
    if predictor is None:
        return chosen_engine(values.engine)
    if values.engine is not None and values.engine != predictor.engine:
        raise UserError(f"engine '{values.engine}' asked for, but the predictor runs '{predictor.engine}'")
    if values.device is not None:
        from totalseg.device import device_kind

        wanted = {"cpu": "cpu", "mps": "mps"}.get(values.device, "cuda")
        if device_kind(predictor.device) not in (wanted, "meta"):
            raise UserError(f"device '{values.device}' asked for, but the predictor runs on {predictor.device}")
    return predictor.engine


def add_arguments(parser: argparse.ArgumentParser, options: tuple[Option, ...] | None = None) -> None:
    """Every option with flags, as ``TotalSegmentator`` parses it."""
    for o in table(options).values():
        if not o.flags:
            continue
        extra = {"default": o.default, **o.cli}
        if extra.get("action") == "store_true":
            extra.pop("default")
        parser.add_argument(*o.flags, dest=o.dest, help=o.help, **extra)


def from_command_line(args: argparse.Namespace, names=None, options: tuple[Option, ...] | None = None) -> dict:
    """The keyword options that parsed ``args`` give (``names``: only these)."""
    result = {}
    for name, o in table(options).items():
        if not o.flags or (names is not None and name not in names):
            continue
        value = getattr(args, o.dest)
        result[name] = o.from_cli(value) if o.from_cli is not None else value
    return result


def per_case_names(options: tuple[Option, ...] | None = None) -> list[str]:
    """The options a cohort passes to every case."""
    return [name for name, o in table(options).items() if o.cohort and o.flags]


def report_fields(values: RunOptions, types: list[str]) -> dict[str, Any]:
    """The run report's option fields (official order), from the table's report keys."""
    fields = {o.report_key: values[o.name] for o in OPTIONS if o.report_key}
    fields["output_type"] = types[0] if len(types) == 1 else types
    fields["roi_subset"] = None if values.roi_subset is None else list(values.roi_subset)
    return {key: fields[key] for key in REPORT_ORDER}


def markdown_table(options: tuple[Option, ...] | None = None) -> str:
    """The README's option table."""
    rows = ["| flags | keyword (API) | default | takes effect in | changes | cohort |", "|---|---|---|---|---|---|"]
    for name, o in table(options).items():
        flags = ", ".join(f"`{f}`" for f in o.flags) or "(API only)"
        default = "—" if o.default in (None, False) else f"`{o.default}`"
        if o.refused:
            effect = "refused (not supported)"
        else:
            effect = STAGES[o.stage]
        cohort = "yes" if o.cohort and o.flags else "no"
        rows.append(f"| {flags} | `{name}` | {default} | {effect} | {o.changes or '—'} | {cohort} |")
    return "\n".join(rows)
