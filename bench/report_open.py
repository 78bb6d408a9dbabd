"""Time until a 512x512x300 case's report is interactive in headless Chromium (issue 16: under 3 s).

The case: the shared real chest CT (512x512x141) stacked to 300 slices, with a label map of 117 classes
(blocks inside the body, ids of the ``total`` task); without the shared data a synthetic phantom is used.
"Interactive" is the moment the viewer page sets ``TSR.ready``: both volumes decoded and on the GPU, the
label table set, the first frame drawn and the controls live. Printed: the time from navigation start
(``performance.now()`` at ready), the wall time around ``driver.get`` + waiting, the report's size, and the
time to write the report.

    python3 bench/report_open.py [--runs 3] [--keep DIR] [--full]

``--full`` also times the full grid (the viewer's button): minutes on a software GPU, seconds on a real one.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
CHEST = ROOT.parent / "shared" / "data" / "extra_ct" / "itkelastix_chest_ct.nii.gz"
SHAPE = (512, 512, 300)


def make_case(folder: Path) -> tuple[Path, Path]:
    """A 512x512x300 CT and a 117-class multilabel segmentation of it."""
    from totalseg.registry import class_map
    from totalseg.write.labelmap import save_multilabel_nifti

    if CHEST.is_file():
        img = nib.load(str(CHEST))
        data = np.asanyarray(img.dataobj).astype(np.int16)
        reps = int(np.ceil(SHAPE[2] / data.shape[2]))
        data = np.concatenate([data if i % 2 == 0 else data[:, :, ::-1] for i in range(reps)], axis=2)
        data = np.ascontiguousarray(data[:, :, : SHAPE[2]])
        affine = img.affine
    else:
        x, y, z = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
        body = ((x - 256) / 200.0) ** 2 + ((y - 256) / 150.0) ** 2 < 1
        data = np.where(body, 40, -1000).astype(np.int16) + np.zeros(SHAPE, np.int16)
        affine = np.diag([0.8, 0.8, 1.5, 1.0])
    body = data > -300
    names = class_map("total")
    x, y, z = np.indices(data.shape, dtype=np.int16, sparse=True)
    block = (x // 48) + 11 * (y // 48) + 121 * (z // 40)
    labels = np.where(body, 1 + block % len(names), 0).astype(np.uint8)
    image_path, seg_path = folder / "ct.nii.gz", folder / "seg.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(image_path))
    save_multilabel_nifti(nib.Nifti1Image(labels, affine), seg_path, names)
    return image_path, seg_path


def open_time(index: Path, driver) -> tuple[float, float]:
    """(ms from navigation start to ready, wall seconds of get + wait) for one fresh load."""
    t0 = time.perf_counter()
    driver.get(index.as_uri())
    while True:
        state = driver.execute_script("return window.TSR ? [TSR.ready, TSR.error, performance.now()] : null")
        if state and state[1]:
            raise RuntimeError(f"viewer error: {state[1]}")
        if state and state[0]:
            ready_ms = driver.execute_script("return TSR.readyAt")
            return float(ready_ms), time.perf_counter() - t0
        if time.perf_counter() - t0 > 120:
            raise RuntimeError("viewer not ready after 120 s")
        time.sleep(0.02)


def main() -> int:
    from browser import chromium_driver  # tests/browser.py: the headless Chromium the tests use

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--keep", type=Path, help="keep the report in this folder")
    p.add_argument("--full", action="store_true", help="also time loading the full grid after the last open")
    args = p.parse_args()
    from totalseg.report.build import write_case_report

    work = Path(tempfile.mkdtemp(prefix="report_open_"))
    try:
        image, seg = make_case(work)
        t = time.perf_counter()
        index = write_case_report(image, seg, args.keep or work / "report")
        build_s = time.perf_counter() - t
        size = sum(f.stat().st_size for f in index.parent.rglob("*") if f.is_file()) / 2**20
        data = sum(f.stat().st_size for f in (index.parent / "data").iterdir()) / 2**20
        driver = chromium_driver()
        try:
            results = [open_time(index, driver) for _ in range(args.runs)]
            full_s = None
            if args.full:
                driver.set_script_timeout(3600)
                # selenium's HTTP client gives up after 120 s by default; a software GPU needs longer here
                config = getattr(driver.command_executor, "_client_config", None)
                if config is not None:
                    config.timeout = 3600
                t = time.perf_counter()
                driver.execute_async_script("TSR.loadFull().then(arguments[0], e => arguments[0](String(e)))")
                full_s = time.perf_counter() - t
        finally:
            driver.quit()
        ready = [r[0] for r in results]
        print(f"case {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, {'chest CT' if CHEST.is_file() else 'phantom'}; report "
              f"written in {build_s:.1f} s, {size:.0f} MiB ({data:.0f} MiB volumes)")
        for i, (ms, wall) in enumerate(results, 1):
            print(f"  open {i}: interactive {ms / 1000:.2f} s after navigation start (wall {wall:.2f} s)")
        print(f"median time to interactive view: {statistics.median(ready) / 1000:.2f} s")
        if full_s is not None:
            print(f"full grid {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} shown {full_s:.1f} s after the button")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
