#!/usr/bin/env python3
"""Carry a trained nnU-Net checkpoint back from the lent GPU machine (bench/gpu/train.sh).

    trained_weights.py export RESULT_FOLDER OUT      on the device: the fold_0 checkpoint (final, else latest)
                                                     as fp16 network weights in parts of <= 15 MiB, and the
                                                     folder's plans/dataset json, log and progress plot
    trained_weights.py restore FROM RESULT_FOLDER    here: a result folder nnU-Net (and totalseg_import_weights)
                                                     reads: fold_0/checkpoint_final.pth with float32 weights

The device may send back at most 64 MiB in 8 files of 16 MiB: the 6 mm network's float32 weights alone are
63 MiB, so they travel as fp16 (the restored network is the trained one with its weights rounded to fp16:
a testbed with realistic logit margins, not a bit-exact copy) and without the optimizer state.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

PART_BYTES = 15 * 1024 * 1024
META = ("plans.json", "dataset.json", "dataset_fingerprint.json")


def _cast(weights: dict, dtype) -> dict:
    """Floating tensors cast to ``dtype``; entries that share a tensor (the decoder's view of the encoder) still do,
    so torch.save writes each once."""
    done: dict = {}
    out = {}
    for name, value in weights.items():
        if value.is_floating_point():
            key = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
            if key not in done:
                done[key] = value.to(dtype)
            value = done[key]
        out[name] = value
    return out


def export(result: Path, out: Path) -> int:
    import torch

    fold = result / "fold_0"
    ckpt = next((fold / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth") if (fold / n).is_file()), None)
    if ckpt is None:
        print(f"export: no checkpoint in {fold}", file=sys.stderr)
        return 1
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    slim = {k: v for k, v in saved.items() if k not in ("optimizer_state", "grad_scaler_state")}
    slim["network_weights"] = _cast(saved["network_weights"], torch.float16)
    slim["totalseg_exported_from"] = ckpt.name
    buf = io.BytesIO()
    torch.save(slim, buf)
    data = buf.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data), PART_BYTES):
        (out / f"weights_part{i // PART_BYTES:02d}.bin").write_bytes(data[i:i + PART_BYTES])
    with tarfile.open(out / "result_meta.tar.gz", "w:gz") as tar:
        for name in META:
            if (result / name).is_file():
                tar.add(result / name, arcname=name)
        for path in sorted(fold.glob("training_log_*.txt")) + sorted(fold.glob("progress.png")):
            tar.add(path, arcname=f"fold_0/{path.name}")
    print(f"export: {ckpt.name} (epoch {saved.get('current_epoch')}) -> {len(data) / 2**20:.1f} MiB of fp16 "
          f"weights in {-(-len(data) // PART_BYTES)} part(s) + result_meta.tar.gz")
    return 0


def restore(src: Path, result: Path) -> int:
    import torch

    parts = sorted(src.glob("weights_part*.bin"))
    if not parts or not (src / "result_meta.tar.gz").is_file():
        print(f"restore: no weights_part*.bin or result_meta.tar.gz in {src}", file=sys.stderr)
        return 1
    saved = torch.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)), map_location="cpu", weights_only=False)
    saved["network_weights"] = _cast(saved["network_weights"], torch.float32)
    if result.exists():
        shutil.rmtree(result)
    (result / "fold_0").mkdir(parents=True)
    with tarfile.open(src / "result_meta.tar.gz") as tar:
        tar.extractall(result, filter="data")
    torch.save(saved, result / "fold_0" / "checkpoint_final.pth")
    plans = json.loads((result / "plans.json").read_text())
    print(f"restore: {result} (trainer {saved.get('trainer_name')}, epoch {saved.get('current_epoch')}, "
          f"plans {plans.get('plans_name')})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export")
    p.add_argument("result", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("restore")
    p.add_argument("src", type=Path)
    p.add_argument("result", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "export":
        return export(args.result, args.out)
    return restore(args.src, args.result)


if __name__ == "__main__":
    sys.exit(main())
