"""What every clinical report shares: the patient's details, the log, the runtime file and the rendered page.

The official reports (``totalseg_spine_report``, ``totalseg_aorta_report``, ``totalseg_pulmonary_report``)
read DICOM-like patient details from a ``nodeinfo`` JSON file, log to a file and to the terminal with
``HH:MM message`` lines, and store each rendered report page as an RGB NIfTI image. The page here is drawn
with matplotlib (imported only when a page is drawn), not through an HTML renderer.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from totalseg.errors import UserError

# Page colours of the official report pages (dark theme).
PAGE_BG = "#000000"
PANEL_BG = "#252525"
VALUE_COLOUR = "#bb86fc"
LABEL_COLOUR = "#ffffff"
FOOTER_COLOUR = "#cccccc"
OK_COLOUR = "#2e7d32"
WARN_COLOUR = "#ff0000"

PAGE_WIDTH = 1200  # px, as the official pages
PAGE_DPI = 100


def report_logger(log_file: Path, name: str) -> logging.Logger:
    """A logger writing ``HH:MM message`` lines to ``log_file`` (replaced) and to stderr."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.unlink(missing_ok=True)
    logger = logging.getLogger(f"totalseg.clinical.{name}.{log_file}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the root logger must not print the lines twice
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M")
    for handler in (logging.FileHandler(log_file), logging.StreamHandler()):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def close_logger(logger: logging.Logger) -> None:
    """Flush and close the log file (so that a test or a service can read it at once)."""
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def read_nodeinfo(path: Path | None) -> dict[str, Any] | None:
    """The patient details of a ``nodeinfo`` JSON file, or None when no file is given or it does not exist."""
    if path is None or not Path(path).exists():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path} is not a readable nodeinfo JSON file ({err}); fix it or leave out -n") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a nodeinfo JSON object ({{\"PatientAge\": ..., ...}}); fix it or leave out -n")
    return data


def parse_age(value: Any) -> int:
    """A DICOM age string such as ``"055Y"`` (or a number) in whole years."""
    try:
        return int(str(value).replace("Y", ""))
    except ValueError:
        raise UserError(f"the patient age {value!r} of the nodeinfo file is not in years (e.g. '055Y')") from None


def age_from_dates(birth_date: Any, study_date: Any) -> int | None:
    """Whole years between two ``YYYYMMDD`` dates (days / 365.25, truncated), None when either is unusable."""
    try:
        born = datetime.strptime(birth_date, "%Y%m%d")
        studied = datetime.strptime(study_date, "%Y%m%d")
    except (TypeError, ValueError):
        return None
    return int((studied - born).days / 365.25)


def to_date(value: Any) -> str:
    """``YYYYMMDD`` as ``DD.MM.YYYY`` (empty for no date), as the pages show dates."""
    if not value:
        return ""
    try:
        return datetime.strptime(str(value), "%Y%m%d").strftime("%d.%m.%Y")
    except ValueError:
        return str(value)


def save_runtime(start_time: float, report_name: str, nodeinfo: Path) -> None:
    """Add ``{report_name: seconds}`` to ``META/runtime.json`` beside the nodeinfo file."""
    from totalseg.write.atomic import write_atomic

    runtime_file = Path(nodeinfo).parent / "META" / "runtime.json"
    runtime_file.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    if runtime_file.exists():
        try:
            data = json.loads(runtime_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}  # a broken file is replaced rather than stopping a finished report
    data[report_name] = round(time.time() - start_time, 2)
    text = json.dumps(data, indent=4)
    write_atomic(runtime_file, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def pages_to_nifti(pages: Sequence[np.ndarray]):
    """RGB pages (rows x columns x 3, uint8; all pasted top-left) as the official report NIfTI.

    The image has one slice per page, ``(columns + 1) x (rows + 1)`` voxels of NIfTI RGB24 and the affine
    diag(-1, -1, 1): a viewer shows each page upright. Voxel ``[i, j]`` holds pixel ``(row j, column i - 1)``;
    the first voxel column and the last voxel row stay black, as in the official files.
    """
    import nibabel as nib

    rows = max(p.shape[0] for p in pages)
    cols = max(p.shape[1] for p in pages)
    data = np.zeros((cols + 1, rows + 1, len(pages), 3), dtype=np.uint8)
    for k, page in enumerate(pages):
        data[1:page.shape[1] + 1, :page.shape[0], k] = np.asarray(page, dtype=np.uint8)[..., :3].transpose(1, 0, 2)
    rgb = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    return nib.Nifti1Image(data.view(rgb).reshape(data.shape[:-1]), affine)


def nifti_to_pages(img) -> list[np.ndarray]:
    """The RGB pages (rows x columns x 3) of a report NIfTI written by :func:`pages_to_nifti` or the official tool."""
    data = np.asanyarray(img.dataobj)
    rgb = np.stack([data["R"], data["G"], data["B"]], axis=-1)
    return [np.ascontiguousarray(rgb[1:, :-1, k].transpose(1, 0, 2)) for k in range(rgb.shape[2])]


def save_nifti(img, path: Path) -> None:
    """Write a NIfTI image atomically (a finished file or none)."""
    import nibabel as nib

    from totalseg.write.atomic import write_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), lambda tmp: nib.save(img, str(tmp)))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a one-line error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("the report pages need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_rgb(fig) -> np.ndarray:
    """The pixels of a drawn matplotlib figure (rows x columns x 3, uint8)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class PageLayout:
    """A page of fixed pixel width drawn top-down on one matplotlib figure; ``y`` counts pixels from the top."""

    def __init__(self, height: int, width: int = PAGE_WIDTH):
        plt = pyplot()
        self.width, self.height = width, height
        self.fig = plt.figure(figsize=(width / PAGE_DPI, height / PAGE_DPI), dpi=PAGE_DPI, facecolor=PAGE_BG)

    def box(self, x: float, y: float, w: float, h: float):
        """A blank axes covering a pixel box (for pictures and panels)."""
        ax = self.fig.add_axes((x / self.width, 1 - (y + h) / self.height, w / self.width, h / self.height))
        ax.set_axis_off()
        return ax

    def panel(self, x: float, y: float, w: float, h: float, colour: str, rounded: float = 0.0) -> None:
        """A filled rectangle (rounded corners of ``rounded`` px)."""
        from matplotlib.patches import FancyBboxPatch

        style = f"round,pad=0,rounding_size={rounded}" if rounded else "square,pad=0"
        ax = self.box(x, y, w, h)
        ax.set_xlim(0, w)
        ax.set_ylim(0, h)
        ax.add_patch(FancyBboxPatch((0, 0), w, h, boxstyle=style, facecolor=colour, edgecolor="none"))

    def text(self, x: float, y: float, s: str, size: float, colour: str = LABEL_COLOUR, weight: str = "normal",
             ha: str = "left", va: str = "top", **kw) -> float:
        """Text at a pixel position (size in px, as CSS); returns its width in px."""
        artist = self.fig.text(x / self.width, 1 - y / self.height, s, fontsize=size * 72 / PAGE_DPI, color=colour,
                               fontweight=weight, ha=ha, va=va, family="DejaVu Sans", **kw)
        return artist.get_window_extent(renderer=self.fig.canvas.get_renderer()).width

    def rgb(self) -> np.ndarray:
        """The page's pixels; the figure is closed."""
        import matplotlib.pyplot as plt

        try:
            return figure_rgb(self.fig)
        finally:
            plt.close(self.fig)


def draw_header(page: PageLayout, title: str, version: str, generated: str) -> int:
    """Title, version and generation time centred at the top; returns the y below the header."""
    width = page.text(page.width / 2, 16, title, 24, weight="bold", ha="center")
    page.text(page.width / 2 + width / 2 + 8, 26, version, 12, colour="#aaaaaa", ha="left")
    page.text(page.width / 2, 50, f"Generated on: {generated}", 12, ha="center")
    page.text(16, 22, "totalseg", 22, weight="bold")
    return 76


def draw_details(page: PageLayout, y: int, fields: Mapping[str, Any], title: str = "PATIENT DETAILS") -> int:
    """A dark panel with a title and ``label / value`` pairs in one row; returns the y below it."""
    height = 92
    page.panel(16, y, page.width - 32, height, PANEL_BG)
    page.text(32, y + 10, title, 14, weight="bold")
    x = 32
    for label, value in fields.items():
        page.text(x, y + 38, label, 14)
        page.text(x, y + 58, str(value), 20, colour=VALUE_COLOUR, weight="bold")
        x += max(len(label) * 8, len(str(value)) * 13) + 32
    return y + height + 8


def draw_footer(page: PageLayout, lines: Sequence[str]) -> None:
    """Small grey lines at the bottom of the page under a thin rule."""
    y = page.height - 18 * len(lines) - 12
    ax = page.box(0, y, page.width, 1)
    ax.axhline(0.5, color=FOOTER_COLOUR, linewidth=1)
    for k, line in enumerate(lines):
        page.text(8, y + 8 + 18 * k, line, 12, colour=FOOTER_COLOUR, weight="bold")


def generated_now() -> str:
    """The page's time stamp, ``DD.MM.YYYY HH:MM:SS`` (local time, as the official pages)."""
    return datetime.now().strftime("%d.%m.%Y %H:%M:%S")


FOOTER_LINES = (
    "For information only; not a medical device.",
    "Please cite: https://pubs.rsna.org/doi/10.1148/ryai.230024",
    "totalseg: an open-source implementation of TotalSegmentator",
)


def _dicom_time(value: str) -> datetime:
    """A DICOM TM value (``HHMMSS`` or ``HHMMSS.ffffff``)."""
    for fmt in ("%H%M%S.%f", "%H%M%S"):
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            pass
    raise UserError(f"the DICOM time {value!r} is not HHMMSS[.ffffff]; fix the header or leave out -on")


def header_file(nifti_path: Path) -> Path:
    """The DICOM header file stored beside a converted series: ``<study>/DICOM/DICOMHEADER_s<NNN>[_a0N].dcm``.

    ``nifti_path`` lies one folder below the study folder and its name holds the series number (``s<NNN>``,
    at the start or after ``_``) and maybe an acquisition suffix ``a0<N>``.
    """
    import re

    name = Path(nifti_path).name
    number = re.search(r"(?:^|_)s(\d{3})", name)
    if number is None:
        raise UserError(f"no series number (s<NNN>) in the file name {name}; rename it or leave out -on")
    suffix = re.search(r"a0\d", name)
    tail = f"_{suffix.group(0)}" if suffix else ""
    return Path(nifti_path).parents[1] / "DICOM" / f"DICOMHEADER_s{int(number.group(1)):03d}{tail}.dcm"


def injection_delay(nifti_path: Path) -> float:
    """Seconds from the contrast bolus start to the content time, from the series' stored DICOM header.

    0.0 when the header has no bolus start time, -100.0 when the header or its times are missing.
    """
    import pydicom

    path = header_file(nifti_path)
    if not path.exists():
        return -100.0
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if not all(tag in ds for tag in ("SeriesTime", "AcquisitionTime", "ContentTime")):
        return -100.0
    if "ContrastBolusStartTime" not in ds:
        return 0.0
    content, bolus = _dicom_time(str(ds.ContentTime)), _dicom_time(str(ds.ContrastBolusStartTime))
    return round(abs((content - bolus).total_seconds()), 2)


def header_phase(nifti_path: Path) -> tuple[str, float]:
    """Contrast phase and time since injection from the DICOM header stored beside a converted series."""
    from totalseg.classify.phase import phase_of

    pi_time = injection_delay(nifti_path)
    return ("error" if pi_time < -5 else phase_of(pi_time)[0]), pi_time
