#!/usr/bin/env python3
"""The official tool and our exact, fast and int8 engines on one input, in one run.

    python3 bench/engines.py --home HOME --input IMG [--out DIR] [--repeat N] [--no-official] \
        [--engines exact fast int8] [--warmup-input SMALL_IMG] -- <TotalSegmentator options, e.g. --fast --ml>

Each tool gets its own copy of HOME (made before any clock starts) that it keeps across its runs, and one
untimed warm-up run first: our per-machine answers (kernel checks, the fast engine's converted models) are
made once per machine (the int8 engine's calibration too), so the timed runs show the steady state a user
sees from the second scan on. The warm-up's wall time is printed too (the cost of the first run on a new
machine). Then the tools run in turn (official, exact, fast, int8; --repeat times) and the table gives median
wall, peak RSS (largest process, as `/usr/bin/time -v`), ratios against the official tool and against the
exact engine, and the agreement of the fast and int8 engines with the exact engine (equal voxels, per-class
Dice) and of the exact engine with the official tool. Results, with every class's Dice, go to
DIR/results.json.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the wrapper, home copies and image comparison of compare.py)

TOOLS = ("official", "exact", "fast", "int8")


def _command(tool: str, official: str) -> list[str]:
    if tool == "official":
        return shlex.split(official)
    return shlex.split(compare.DEFAULT_OURS) + ["--engine", tool]


def _run(tool: str, cmd: list[str], home: Path, args, options: list[str], run_dir: Path) -> dict:
    """One measured run of ``tool`` on its own (kept) home."""
    return compare.run_one_in_home(tool, cmd, args, options, run_dir, home)


def _dice_summary(res: dict) -> dict:
    per_class = {k: d["dice"] for k, d in res.get("dice", {}).items() if max(d["n_official"], d["n_ours"]) >= 50}
    dice = list(per_class.values())
    return {"equal_voxels": res.get("equal_fraction"), "labels": len(dice),
            "dice_min": min(dice) if dice else None, "dice_mean": statistics.fmean(dice) if dice else None,
            "dice": per_class}


def _trained_classes(reference: Path, exact: Path, against_exact: dict) -> dict:
    """The fast and int8 engines' agreement with exact (``against_exact``: their compare_images results) over the
    classes exact segments with Dice > 0.5 against ``reference`` (the issue's acceptance: Dice >= 0.98 there)."""
    against = compare.compare_images(reference, exact, True)["dice"]
    trained = sorted((k for k, d in against.items() if d["dice"] > 0.5), key=int)
    out = {}
    for tool, res in against_exact.items():
        if trained:
            dice = {k: res["dice"][k]["dice"] if k in res["dice"] else 0.0 for k in trained}
            out[f"{tool} vs exact, trained classes"] = {
                "equal_voxels": res["equal_fraction"], "labels": len(dice),
                "dice_min": min(dice.values()), "dice_mean": statistics.fmean(dice.values()), "dice": dice,
                "exact_vs_reference": {k: against[k]["dice"] for k in trained}}
    return out


def _print(summary: dict, agreement: dict) -> None:
    print("\ntool      runs  wall s (median)  peak RSS MiB  wall/official  RSS/official  wall/exact  RSS/exact")
    ref_o, ref_e = summary.get("official"), summary.get("exact")
    for tool in TOOLS:
        s = summary.get(tool)
        if not s:
            continue
        def ratio(ref, key):
            return f"{s[key] / ref[key]:.3f}" if ref else "-"
        print(f"{tool:8s}  {s['runs']:>4}  {s['wall_median_s']:>15.1f}  {s['peak_rss_mib']:>12.0f}  "
              f"{ratio(ref_o, 'wall_median_s'):>13}  {ratio(ref_o, 'peak_rss_mib'):>12}  "
              f"{ratio(ref_e, 'wall_median_s'):>10}  {ratio(ref_e, 'peak_rss_mib'):>9}")
    for pair, a in agreement.items():
        which = "Dice > 0.5 of exact against the reference" if "trained" in pair else ">= 50 voxels"
        print(f"{pair}: {100 * a['equal_voxels']:.4f} % equal voxels; per-class Dice (classes {which}, "
              f"{a['labels']}): min {a['dice_min']:.4f}, mean {a['dice_mean']:.4f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", required=True, type=Path)
    ap.add_argument("--input", "-i", required=True, type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--warmup-input", type=Path, default=None,
                    help="image for the untimed warm-up runs (default: --input); a small one with the same "
                         "options makes the same per-machine answers in far less time")
    ap.add_argument("--no-official", action="store_true", help="only our engines")
    ap.add_argument("--engines", nargs="+", choices=TOOLS[1:], default=list(TOOLS[1:]),
                    help="which of our engines run (default: all; exact is the reference of the agreement)")
    ap.add_argument("--official", default=compare.DEFAULT_OFFICIAL)
    ap.add_argument("--reference", type=Path, default=None,
                    help="a multilabel reference segmentation of --input (e.g. the official model's): the classes "
                         "the exact engine gets right (Dice > 0.5 against it) are the trained ones, and the fast "
                         "and int8 engines' Dice against exact is also given over those classes alone")
    args = ap.parse_args(argv)
    out = (args.out or compare.BENCH / "work" / time.strftime("engines-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tools = [t for t in TOOLS if (t == "official" and not args.no_official) or t in args.engines]
    homes = {t: compare.copy_home(args.home, out / "homes" / t) for t in tools}
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    warmup = {}
    warmup_args = argparse.Namespace(**{**vars(args), "input": args.warmup_input or args.input})
    for tool in tools:
        m = _run(tool, _command(tool, args.official), homes[tool], warmup_args, options, out / tool / "warmup")
        if m.get("rc") != 0:
            return 1
        warmup[tool] = m["wall_s"]
        print(f"[{tool}] first run on this home (warm-up): {m['wall_s']:.1f} s", file=sys.stderr)
    for k in range(args.repeat):
        for tool in tools:
            m = _run(tool, _command(tool, args.official), homes[tool], args, options, out / tool / f"run{k}")
            if m.get("rc") != 0:
                return 1
            runs[tool].append(m)
    summary = {t: compare.summarize(r) for t, r in runs.items()}
    per_label = compare.wants_ml(options)
    first = {t: Path(runs[t][0]["output"]) for t in tools}
    agreement, against_exact = {}, {}
    if per_label and "exact" in first:  # one multilabel file each
        for tool in ("fast", "int8"):
            if tool in first:
                against_exact[tool] = compare.compare_images(first["exact"], first[tool], True)
                agreement[f"{tool} vs exact"] = _dice_summary(against_exact[tool])
        if "official" in first:
            agreement["exact vs official"] = _dice_summary(
                compare.compare_images(first["official"], first["exact"], True))
    if args.reference is not None and "exact" in first:
        agreement.update(_trained_classes(args.reference, first["exact"], against_exact))
    _print(summary, agreement)
    (out / "results.json").write_text(json.dumps(
        {"input": str(args.input), "warmup_input": str(warmup_args.input), "options": options,
         "warmup_wall_s": warmup, "summary": summary,
         "agreement": agreement, "runs": runs}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
