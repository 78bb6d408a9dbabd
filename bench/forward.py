"""One network's forward pass on one tile: nnU-Net's own ``net(x)`` against our lean pass.

    python3 bench/forward.py --home HOME --dataset 291 [--repeat 3]

Prints, per repeat, wall time, system time (page faults) and peak RSS of each way, and whether the
Gaussian-weighted fp16 sums are bitwise equal. Each way runs in its own process (peak RSS is per
process). The lean pass uses the kernel checks stored in HOME/kernel_checks, if any.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def worker(folder: str, way: str, repeat: int, out: str) -> None:
    import torch

    from totalseg.predict.kernel_checks import KernelChecks
    from totalseg.predict.lean_unet import LeanUNet
    from totalseg.predict.model import load_model
    from totalseg.predict.sliding_window import gaussian_weights

    model = load_model(Path(folder), "3d_fullres", (0,))
    checks = Path(folder).parents[3] / "kernel_checks" / f"{Path(folder).parent.name}.json"
    net, patch = model.networks[0], model.plans.patch_size
    torch.manual_seed(0)
    tile = torch.randn(1, 1, *patch)
    weight = torch.from_numpy(gaussian_weights(tuple(patch)).copy())
    torch.set_flush_denormal(True)
    rows = []
    with torch.inference_mode():
        for _ in range(repeat):
            total = torch.zeros((model.plans.num_heads, *patch), dtype=torch.float16)
            _reset_peak()
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            if way == "nnunet":
                y = net(tile)[0]
                y *= weight
                total += y
                del y
            else:
                for z, y in LeanUNet(net, KernelChecks(checks)).weighted_slabs(tile, weight):
                    total[:, z] += y
            after = resource.getrusage(resource.RUSAGE_SELF)
            rows.append({"wall_s": time.perf_counter() - start, "sys_s": after.ru_stime - before.ru_stime,
                         "peak_mib": _peak_mib()})
    torch.save(total, out)
    print(json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--dataset", required=True, help="model id, e.g. 291 (1.5 mm part) or 297 (3 mm)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.repeat, args.worker[2])
        return
    folder = next((args.home / "nnunet" / "results").glob(f"Dataset{args.dataset}_*/*"))
    sums = {}
    for way in ("nnunet", "lean"):
        out = f"/tmp/bench_forward_{way}.pt"
        done = subprocess.run([sys.executable, __file__, "--home", str(args.home), "--dataset", args.dataset,
                               "--repeat", str(args.repeat), "--worker", str(folder), way, out],
                              check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        for k, row in enumerate(json.loads(done.stdout.strip().splitlines()[-1])):
            print(f"{way:7s} run {k + 1}: {row['wall_s']:6.2f} s wall, {row['sys_s']:5.2f} s system, "
                  f"peak RSS {row['peak_mib']:6.0f} MiB")
        sums[way] = out
    import torch

    equal = torch.equal(torch.load(sums["nnunet"]), torch.load(sums["lean"]))
    print(f"{folder.parent.name}: weighted fp16 sums bitwise equal: {equal}")


if __name__ == "__main__":
    main()
