"""One tile forward of official-size networks: torch fp32 against the OpenVINO fast engine (f32, bf16).

    python3 bench/engine.py [--home HOME] [--ids 297 291] [--repeat 2] [--rounds 3] [--input CT]

Without --home, a temporary home of random official-size networks is written by make_random_weights.py
(and deleted afterwards). Each (model, engine) runs in its own process, so peak RSS is per process;
--rounds runs all of them again, engines taking turns, so that a change in the machine's load hits all.
Per model and engine it prints: build time (load excluded; first build converts and caches the IR,
a second build reads it; medians over rounds), first call, the median of the --repeat further calls of
all rounds and its ratio to torch's, peak RSS during the calls, and against torch's output on the same
tile the max |logit difference| and the argmax agreement. The tile is the centre of a real chest CT,
resampled to the model's spacing, normalised as its plans say and zero-padded to the patch (as the
sliding window pads).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "extra_ct" / "itkelastix_chest_ct.nii.gz"


def _peak_mib() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def ct_tile(plans, path: Path) -> np.ndarray:
    """A (1, 1, *patch) float32 tile: the CT's centre at the model's spacing, normalised, zero-padded."""
    import nibabel as nib
    from scipy.ndimage import zoom

    from totalseg.prepare.normalise import normalise_channel

    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)  # z, y, x: nnU-Net's axis order
    spacing = [float(s) for s in img.header.get_zooms()[::-1]]
    data = zoom(data, [s / t for s, t in zip(spacing, plans.spacing)], order=1)
    normalise_channel(data, plans.normalization[0], plans.intensity_properties["0"])
    tile = np.zeros(plans.patch_size, dtype=np.float32)
    src, dst = [], []
    for size, p in zip(data.shape, plans.patch_size):
        n = min(size, p)
        src.append(slice((size - n) // 2, (size - n) // 2 + n))
        dst.append(slice((p - n) // 2, (p - n) // 2 + n))
    tile[tuple(dst)] = data[tuple(src)]
    return tile[None, None]


def _max_diff(out, reference: Path) -> float:
    """max |out - torch| without holding both in memory at once (118 classes: 760 MB each)."""
    ref = np.load(reference, mmap_mode="r")
    return max(float(np.abs(out[0, c] - ref[0, c]).max()) for c in range(out.shape[1]))


def worker(folder: Path, engine: str, repeat: int, work: Path, ds: str, round_: str) -> dict:
    import torch

    from totalseg.predict.model import load_model

    model = load_model(folder, "3d_fullres", (0,))
    net, patch = model.networks[0], model.plans.patch_size
    tile = torch.from_numpy(np.load(work / f"{ds}_tile.npy"))
    torch.set_flush_denormal(True)  # as the sliding window runs torch
    row = {"threads": torch.get_num_threads()}
    start = time.perf_counter()
    if engine == "torch":
        run = net
    else:
        from totalseg.predict.fast_engine import FastNetwork

        cache = work / "engine_cache" / ds / engine / round_  # a new one each time: first builds convert
        run = FastNetwork(net, patch, 1, cache, precision=engine)
        row["precision"] = run.precision
    row["build_s"] = time.perf_counter() - start
    row["peak_build_mib"] = _peak_mib()
    _reset_peak()
    calls = []
    with torch.inference_mode():
        for _ in range(repeat + 1):
            out = None  # the previous output is freed before the next call, as in the sliding window
            start = time.perf_counter()
            out = run(tile)
            calls.append(time.perf_counter() - start)
    row.update(first_s=calls[0], calls_s=calls[1:], peak_calls_mib=_peak_mib())
    out = out.numpy()
    np.save(work / f"{ds}_{engine}_labels.npy", out[0].argmax(0).astype(np.uint8))
    if engine == "torch":
        np.save(work / f"{ds}_torch_logits.npy", out)
    else:
        row["max_diff"] = _max_diff(out, work / f"{ds}_torch_logits.npy")
        del run, out
        start = time.perf_counter()
        FastNetwork(net, patch, 1, cache, precision=engine)
        row["rebuild_s"] = time.perf_counter() - start
    return row


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _versions() -> str:
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"CPU {cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}, "
            f"torch {version('torch')}, openvino {version('openvino')}")


def _run_worker(folder: Path, engine: str, args, work: Path, ds: str, round_: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--repeat", str(args.repeat),
                           "--worker", str(folder), engine, str(work), ds, str(round_)], check=False,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"engine.py: {engine} on {ds} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _merge(rounds: list[dict]) -> dict:
    """One row from several rounds: all timed calls, median build and first-call times, max peak."""
    row = dict(rounds[0])
    row["calls_s"] = [c for r in rounds for c in r["calls_s"]]
    for key in ("build_s", "rebuild_s", "first_s"):
        if key in row:
            row[key] = statistics.median(r[key] for r in rounds)
    row["peak_calls_mib"] = max(r["peak_calls_mib"] for r in rounds)
    return row


def _table_row(name: str, engine: str, row: dict, torch_median: float, agreement: float) -> str:
    calls = row["calls_s"]
    median = statistics.median(calls)
    build = "-" if engine == "torch" else f"{row['build_s']:.1f} / {row['rebuild_s']:.1f}"
    diff = "-" if engine == "torch" else f"{row['max_diff']:.3g}"
    label = "torch fp32" if engine == "torch" else f"OpenVINO {row['precision']}"
    return (f"| {name} | {label} | {build} | {row['first_s']:.2f} | {median:.2f} "
            f"({min(calls):.2f}-{max(calls):.2f}, n={len(calls)}) | {median / torch_median:.2f} | "
            f"{row['peak_calls_mib']:.0f} | {diff} | {agreement:.4%} |")


def bench(home: Path, args) -> None:
    from totalseg.predict.fast_engine import default_precision, native_bf16
    from totalseg.predict.model import read_plans

    engines = ["torch", "f32"] + (["bf16"] if native_bf16() else [])
    print(_versions())
    print(f"input {args.input.name}; {args.rounds} round(s) of {args.repeat} timed calls after a first one; "
          f"threads {_threads()}; default precision {default_precision()}\n")
    print("| model | engine | build s (convert / cached) | first call s | median call s (min-max, n) | "
          "x torch | peak RSS calls MiB | max abs logit diff | argmax agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        work = Path(tmp)
        for ds in args.ids:
            folder = next((home / "nnunet" / "results").glob(f"Dataset{ds}_*/*__3d_fullres"))
            plans = read_plans(folder, "3d_fullres")
            np.save(work / f"{ds}_tile.npy", ct_tile(plans, args.input))
            name = f"{ds} ({'x'.join(map(str, plans.patch_size))}, {plans.num_heads} cl.)"
            rounds = [{engine: _run_worker(folder, engine, args, work, ds, r) for engine in engines}
                      for r in range(args.rounds)]
            rows = {engine: _merge([r[engine] for r in rounds]) for engine in engines}
            reference = np.load(work / f"{ds}_torch_labels.npy")
            torch_median = statistics.median(rows["torch"]["calls_s"])
            for engine, row in rows.items():
                agreement = float((np.load(work / f"{ds}_{engine}_labels.npy") == reference).mean())
                print(_table_row(name, engine, row, torch_median, agreement), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, help="weights home with the models (default: a temporary random one)")
    ap.add_argument("--ids", nargs="+", default=["297", "291"], help="dataset ids (default: 297 291)")
    ap.add_argument("--repeat", type=int, default=2, help="timed calls after the first (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="times every engine runs, taking turns (default 3)")
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT, help=f"CT to cut the tile from ({DEFAULT_INPUT})")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        folder, engine, work, ds, round_ = args.worker
        print(json.dumps(worker(Path(folder), engine, args.repeat, Path(work), ds, round_)))
        return
    if args.home is not None:
        bench(args.home, args)
        return
    home = Path(tempfile.mkdtemp(prefix="bench_engine_home_"))
    try:
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_random_weights.py"), "--out", str(home),
                        "--ids", *args.ids], check=True, stdout=subprocess.DEVNULL)
        bench(home, args)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
