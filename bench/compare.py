#!/usr/bin/env python3
"""Run the official TotalSegmentator and ours on the same input; compare speed, memory and output.

    python3 bench/compare.py --home HOME --input IMG [--out DIR] [--repeat N] [--only official|ours] \
        [--ours CMD] [--official CMD] -- <TotalSegmentator options...>

Each run gets:
  * its OWN fresh copy of HOME as TOTALSEG_HOME_DIR (both tools may write into the home, e.g. config.json);
    the copy is made before the clock starts and removed afterwards (--keep-homes keeps it);
  * `-i IMG -o <its own output>` and the given options, with `-d cpu` appended;
    the output is `<out>/<tool>/run<k>/seg.nii.gz` when the options contain --ml/-ml, else the folder
    `<out>/<tool>/run<k>/seg`;
  * a fresh Python wrapper process (see WRAPPER below) that measures wall time and peak RSS.

Order: for each repeat, official first, then ours. The table shows per tool the median and min wall time,
the peak RSS (max over repeats) and ours/official ratios; then the voxel agreement of the two outputs of
the first repeat (a --ml file: shape/affine/dtype, fraction of equal voxels, Dice per label; an output folder:
the same per file, plus statistics.json values). Everything is also written to <out>/results.json and each
run's stdout/stderr to <out>/<tool>/run<k>/{stdout,stderr}.log.

Exit status: 1 if a run fails (its stderr tail is printed); 2 with --strict when the outputs do not meet the
oracle criterion (>= 99.99 % equal voxels, every label with >= 50 voxels at Dice >= 0.999, same shape/affine/dtype).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_OFFICIAL = str(BENCH / ".venv-official" / "bin" / "TotalSegmentator")
DEFAULT_OURS = f"{shlex.quote(sys.executable)} -m totalseg.cli.totalsegmentator"

# The wrapper runs as a FRESH Python process per measured command, so its RUSAGE_CHILDREN covers exactly
# that command's process tree and nothing the harness ran before.
#
# Peak RSS, main figure ("peak RSS"): getrusage(RUSAGE_CHILDREN).ru_maxrss of the wrapper after the command
# exited. On Linux this is the ru_maxrss of the LARGEST single process among all descendants that were waited
# for (a parent's RUSAGE_CHILDREN folds in its own waited-for children as a max, not a sum), in KiB. It is the
# same number `/usr/bin/time -v` reports as "Maximum resident set size" (and what oracle_tiny/MANIFEST.md
# quotes). It does NOT add up processes that are alive at the same time (e.g. nnU-Net's export workers next
# to the main process); for that see the second figure.
#
# Second figure ("tree PSS, sampled"): the wrapper polls /proc every 0.1 s and sums the PSS (proportional set
# size, /proc/PID/smaps_rollup: shared pages split between the processes sharing them, so forked workers are
# not counted twice) of all live processes in the command's tree; the maximum over the samples approximates
# the concurrent memory peak of the whole tree (spikes shorter than a sample interval are missed). Falls back
# to RSS (/proc/PID/statm) where smaps_rollup cannot be read.
WRAPPER = r'''
import json, os, resource, subprocess, sys, threading, time
out_json, cmd = sys.argv[1], sys.argv[2:]
PAGE = os.sysconf("SC_PAGE_SIZE")

def tree_rss(root):
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * PAGE
            except (OSError, ValueError, IndexError):
                pass
        stack.extend(children.get(pid, ()))
    return total

peak_sum = 0
done = threading.Event()
t0 = time.perf_counter()
proc = subprocess.Popen(cmd)

def sample():
    global peak_sum
    while not done.is_set():
        try:
            peak_sum = max(peak_sum, tree_rss(proc.pid))
        except Exception:
            pass
        done.wait(0.1)

th = threading.Thread(target=sample, daemon=True)
th.start()
rc = proc.wait()
wall = time.perf_counter() - t0
done.set()
th.join()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out_json, "w") as f:
    json.dump({"rc": rc, "wall_s": wall, "maxrss_kib": ru.ru_maxrss, "tree_pss_sampled_bytes": peak_sum,
               "user_s": ru.ru_utime, "sys_s": ru.ru_stime}, f)
sys.exit(rc if rc >= 0 else 128 - rc)
'''

MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------- running

def wants_ml(options: list[str]) -> bool:
    return any(o in ("--ml", "-ml") for o in options)


def copy_home(home: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(home, dst, symlinks=False)
    # the source may be read-only (shared/data): make the copy writable
    for root, dirs, files in os.walk(dst):
        for n in dirs + files:
            p = os.path.join(root, n)
            os.chmod(p, os.stat(p).st_mode | 0o200)
    os.chmod(dst, os.stat(dst).st_mode | 0o200)
    return dst


def run_one(tool: str, base_cmd: list[str], args, options: list[str], run_dir: Path, homes_dir: Path) -> dict:
    """One measured run on a fresh copy of the home (removed afterwards unless --keep-homes)."""
    home = copy_home(args.home, homes_dir / f"{tool}-{run_dir.name}")
    try:
        return run_one_in_home(tool, base_cmd, args, options, run_dir, home)
    finally:
        if not args.keep_homes:
            shutil.rmtree(home, ignore_errors=True)


def run_one_in_home(tool: str, base_cmd: list[str], args, options: list[str], run_dir: Path, home: Path) -> dict:
    """One measured run of ``base_cmd`` on ``args.input`` with ``home`` as TOTALSEG_HOME_DIR."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    output = run_dir / ("seg.nii.gz" if wants_ml(options) else "seg")
    cmd = base_cmd + ["-i", str(args.input), "-o", str(output)] + options + ["-d", "cpu"]
    env = dict(os.environ, TOTALSEG_HOME_DIR=str(home))
    if tool != "official":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    (run_dir / "command.txt").write_text(
        f"TOTALSEG_HOME_DIR={shlex.quote(str(home))} " + " ".join(shlex.quote(c) for c in cmd) + "\n")
    metrics_file = run_dir / "metrics.json"
    print(f"[{tool} {run_dir.name}] {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
    with open(run_dir / "stdout.log", "wb") as so, open(run_dir / "stderr.log", "wb") as se:
        p = subprocess.run([sys.executable, "-c", WRAPPER, str(metrics_file)] + cmd,
                           stdout=so, stderr=se, env=env)
    m = json.loads(metrics_file.read_text()) if metrics_file.exists() else {"rc": p.returncode}
    m.update(tool=tool, run=run_dir.name, output=str(output), command=cmd)
    if m.get("rc") != 0:
        tail = (run_dir / "stderr.log").read_text(errors="replace").splitlines()[-40:]
        out_tail = (run_dir / "stdout.log").read_text(errors="replace").splitlines()[-15:]
        print(f"\n{tool} {run_dir.name} FAILED (exit {m.get('rc')}); stdout tail:\n  " + "\n  ".join(out_tail)
              + "\nstderr tail:\n  " + "\n  ".join(tail), file=sys.stderr)
    else:
        print(f"[{tool} {run_dir.name}] {m['wall_s']:.1f} s, peak RSS {m['maxrss_kib'] / 1024:.0f} MiB "
              f"(tree PSS {m['tree_pss_sampled_bytes'] / MIB:.0f} MiB)", file=sys.stderr, flush=True)
    return m


# --------------------------------------------------------------------------------------------- comparing

def compare_images(a_path: Path, b_path: Path, per_label: bool) -> dict:
    import nibabel as nib
    import numpy as np

    a_img, b_img = nib.load(str(a_path)), nib.load(str(b_path))
    res = {"shape_official": list(a_img.shape), "shape_ours": list(b_img.shape),
           "dtype_official": str(a_img.get_data_dtype()), "dtype_ours": str(b_img.get_data_dtype()),
           "affine_max_abs_diff": float(np.abs(a_img.affine - b_img.affine).max())}
    res["same_shape"] = a_img.shape == b_img.shape
    res["same_dtype"] = res["dtype_official"] == res["dtype_ours"]
    if not res["same_shape"]:
        res["ok"] = False
        return res
    a = np.asanyarray(a_img.dataobj)
    b = np.asanyarray(b_img.dataobj)
    res["equal_fraction"] = float((a == b).mean())
    labels = np.union1d(np.unique(a), np.unique(b))
    labels = labels[labels != 0]
    dice = {}
    if per_label:
        for lab in labels:
            ma, mb = a == lab, b == lab
            na, nb = int(ma.sum()), int(mb.sum())
            inter = int(np.logical_and(ma, mb).sum())
            dice[str(int(lab)) if float(lab).is_integer() else str(lab)] = {
                "dice": 2 * inter / (na + nb) if na + nb else 1.0, "n_official": na, "n_ours": nb}
    else:  # binary mask file
        ma, mb = a != 0, b != 0
        na, nb = int(ma.sum()), int(mb.sum())
        inter = int(np.logical_and(ma, mb).sum())
        dice["mask"] = {"dice": 2 * inter / (na + nb) if na + nb else 1.0, "n_official": na, "n_ours": nb}
    res["dice"] = dice
    res["ok"] = bool(res["same_shape"] and res["same_dtype"] and res["affine_max_abs_diff"] < 1e-4
                     and res["equal_fraction"] >= 0.9999
                     and all(d["dice"] >= 0.999 for d in dice.values()
                             if max(d["n_official"], d["n_ours"]) >= 50))
    return res


def compare_json(a_path: Path, b_path: Path, rtol: float = 1e-3) -> dict:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    worst = {"key": None, "rel": 0.0}
    mismatches = []

    def walk(x, y, key):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in set(x) | set(y):
                if k not in x or k not in y:
                    mismatches.append(f"{key}/{k}: missing in {'ours' if k not in y else 'official'}")
                else:
                    walk(x[k], y[k], f"{key}/{k}")
        elif isinstance(x, (int, float)) and isinstance(y, (int, float)):
            rel = abs(x - y) / max(abs(x), abs(y), 1e-12) if x != y else 0.0
            if rel > worst["rel"]:
                worst.update(key=key, rel=rel)
            if rel > rtol:
                mismatches.append(f"{key}: {x} vs {y}")
        elif x != y:
            mismatches.append(f"{key}: {x!r} vs {y!r}")

    walk(a, b, "")
    return {"worst_rel_diff": worst, "mismatches": mismatches[:20], "n_mismatches": len(mismatches),
            "ok": not mismatches}


def compare_outputs(off: Path, ours: Path) -> dict:
    if off.is_file() or ours.is_file() or off.name.endswith(".nii.gz"):
        if not (off.exists() and ours.exists()):
            return {"ok": False, "error": f"missing output: official {off.exists()}, ours {ours.exists()}"}
        return {"kind": "file", "files": {off.name: compare_images(off, ours, per_label=True)},
                "ok": None}
    if not (off.is_dir() and ours.is_dir()):
        return {"ok": False, "error": f"missing output folder: official {off.is_dir()}, ours {ours.is_dir()}"}
    names_a = {p.relative_to(off).as_posix() for p in off.rglob("*") if p.is_file()}
    names_b = {p.relative_to(ours).as_posix() for p in ours.rglob("*") if p.is_file()}
    res = {"kind": "folder", "only_official": sorted(names_a - names_b), "only_ours": sorted(names_b - names_a),
           "files": {}}
    for name in sorted(names_a & names_b):
        if name.endswith((".nii.gz", ".nii")):
            res["files"][name] = compare_images(off / name, ours / name, per_label=False)
        elif name.endswith(".json"):
            res["files"][name] = compare_json(off / name, ours / name)
    return res


def finish_agreement(res: dict) -> dict:
    if res.get("error"):
        return res
    res["ok"] = (not res.get("only_official") and not res.get("only_ours")
                 and all(f.get("ok") for f in res["files"].values()))
    return res


def print_agreement(res: dict) -> None:
    print("\nOutput agreement (official vs ours, run1):")
    if res.get("error"):
        print("  " + res["error"])
        return
    if res["kind"] == "folder":
        print(f"  files: {len(res['files'])} compared, only official: {len(res['only_official'])}, "
              f"only ours: {len(res['only_ours'])}")
        for key in ("only_official", "only_ours"):
            if res[key]:
                print(f"    {key}: {', '.join(res[key][:10])}{' ...' if len(res[key]) > 10 else ''}")
    rows = []
    for name, f in res["files"].items():
        if "dice" not in f and "worst_rel_diff" in f:  # json
            w = f["worst_rel_diff"]
            print(f"  {name}: {'OK' if f['ok'] else 'DIFFERS'}; worst rel diff {w['rel']:.2e}"
                  + (f" at {w['key']}" if w["key"] else "")
                  + (f"; {f['n_mismatches']} mismatches, e.g. {f['mismatches'][:3]}" if f["mismatches"] else ""))
            continue
        if not f.get("same_shape", True):
            print(f"  {name}: SHAPE DIFFERS official {f['shape_official']} ours {f['shape_ours']}")
            continue
        if res["kind"] == "file":
            print(f"  {name}: shape {f['shape_official']}, dtype {f['dtype_official']} vs {f['dtype_ours']}, "
                  f"affine max diff {f['affine_max_abs_diff']:.2e}, equal voxels {100 * f['equal_fraction']:.4f} %")
            worst = sorted(f["dice"].items(), key=lambda kv: kv[1]["dice"])
            print(f"  labels: {len(worst)}; Dice < 1 for {sum(d['dice'] < 1 for _, d in worst)}")
            if any(d["dice"] < 1 for _, d in worst):
                print("  label   Dice      n_official  n_ours")
            for lab, d in worst:
                if d["dice"] < 1:
                    print(f"  {lab:>5}  {d['dice']:.5f}  {d['n_official']:>10}  {d['n_ours']:>7}")
        else:
            d = f["dice"]["mask"]
            rows.append((d["dice"], name, f["equal_fraction"], d["n_official"], d["n_ours"], f))
    if rows:
        rows.sort()
        bad = [r for r in rows if r[0] < 1 or r[5]["dtype_official"] != r[5]["dtype_ours"]
               or r[5]["affine_max_abs_diff"] >= 1e-4]
        print(f"  mask files: {len(rows)}; min Dice {rows[0][0]:.5f}; min equal-voxel fraction "
              f"{min(r[2] for r in rows):.6f}; files not identical: {len(bad)}")
        for dice, name, eq, na, nb, f in bad[:30]:
            print(f"    {name:45s} Dice {dice:.5f}  equal {100 * eq:.4f} %  n {na} vs {nb}"
                  + (f"  dtype {f['dtype_official']} vs {f['dtype_ours']}" if f['dtype_official'] != f['dtype_ours'] else "")
                  + (f"  affine diff {f['affine_max_abs_diff']:.1e}" if f['affine_max_abs_diff'] >= 1e-4 else ""))
    print(f"  oracle criterion (>= 99.99 % equal, Dice >= 0.999 for labels >= 50 voxels): "
          f"{'MET' if res['ok'] else 'NOT MET'}")


# ---------------------------------------------------------------------------------------------- main

def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("rc") == 0]
    if not ok:
        return {}
    walls = [r["wall_s"] for r in ok]
    return {"runs": len(ok), "wall_median_s": statistics.median(walls), "wall_min_s": min(walls),
            "peak_rss_mib": max(r["maxrss_kib"] for r in ok) / 1024,
            "tree_pss_sampled_mib": max(r["tree_pss_sampled_bytes"] for r in ok) / MIB,
            "cpu_s_median": statistics.median(r["user_s"] + r["sys_s"] for r in ok)}


def print_table(summary: dict) -> None:
    print("\ntool        runs  wall s (median)  wall s (min)  CPU s  peak RSS MiB  tree PSS MiB (sampled)")
    for tool in ("official", "ours"):
        s = summary.get(tool)
        if s:
            print(f"{tool:10s}  {s['runs']:>4}  {s['wall_median_s']:>15.1f}  {s['wall_min_s']:>12.1f}  "
                  f"{s['cpu_s_median']:>5.0f}  {s['peak_rss_mib']:>12.0f}  {s['tree_pss_sampled_mib']:>22.0f}")
    if summary.get("official") and summary.get("ours"):
        o, u = summary["official"], summary["ours"]
        print(f"{'ours/off.':10s}  {'':>4}  {u['wall_median_s'] / o['wall_median_s']:>15.3f}  "
              f"{u['wall_min_s'] / o['wall_min_s']:>12.3f}  {u['cpu_s_median'] / max(o['cpu_s_median'], 1e-9):>5.2f}  "
              f"{u['peak_rss_mib'] / o['peak_rss_mib']:>12.3f}  "
              f"{u['tree_pss_sampled_mib'] / max(o['tree_pss_sampled_mib'], 1e-9):>22.3f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        i = argv.index("--")
        argv, options = argv[:i], argv[i + 1:]
    else:
        options = []
    ap = argparse.ArgumentParser(description="Compare the official TotalSegmentator with ours.",
                                 usage="%(prog)s --home HOME --input IMG [options] -- <TotalSegmentator options>")
    ap.add_argument("--home", required=True, type=Path, help="weights home; each run gets a fresh copy")
    ap.add_argument("--input", "-i", required=True, type=Path, help="input image (or DICOM folder)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default bench/work/compare-<time>)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool (official, ours, official, ours, ...)")
    ap.add_argument("--only", choices=("official", "ours"), help="run only one tool (no agreement check)")
    ap.add_argument("--official", default=DEFAULT_OFFICIAL, help=f"official command (default {DEFAULT_OFFICIAL})")
    ap.add_argument("--ours", default=DEFAULT_OURS, help=f"our command (default '{DEFAULT_OURS}')")
    ap.add_argument("--keep-homes", action="store_true", help="keep the per-run home copies")
    ap.add_argument("--strict", action="store_true", help="exit 2 when the outputs do not meet the oracle criterion")
    args = ap.parse_args(argv)

    args.home = args.home.resolve()
    args.input = args.input.resolve()
    if not (args.home / "nnunet").is_dir():
        ap.error(f"--home {args.home} has no nnunet/ folder")
    if not args.input.exists():
        ap.error(f"--input {args.input} does not exist")
    if any(o in ("-i", "--input", "-o", "--output") for o in options):
        ap.error("give the input with --input; the outputs are chosen by compare.py")
    out = (args.out or BENCH / "work" / time.strftime("compare-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    homes_dir = Path(tempfile.mkdtemp(prefix="homes-", dir=out))

    tools = {"official": shlex.split(args.official), "ours": shlex.split(args.ours)}
    order = [t for t in ("official", "ours") if args.only in (None, t)]
    runs: dict[str, list[dict]] = {t: [] for t in order}
    failed = False
    for k in range(1, args.repeat + 1):
        for tool in order:
            m = run_one(tool, tools[tool], args, options, out / tool / f"run{k}", homes_dir)
            runs[tool].append(m)
            failed |= m.get("rc") != 0
        if failed:
            break
    if not args.keep_homes:
        shutil.rmtree(homes_dir, ignore_errors=True)

    summary = {t: summarize(r) for t, r in runs.items()}
    result = {"input": str(args.input), "home": str(args.home), "options": options + ["-d", "cpu"],
              "summary": summary, "runs": runs}
    sys.stderr.flush()
    print(f"\ninput: {args.input}\noptions: {' '.join(options + ['-d', 'cpu'])}\nhome: {args.home}")
    print_table(summary)

    agreement = None
    if not failed and len(order) == 2:
        agreement = finish_agreement(compare_outputs(Path(runs["official"][0]["output"]),
                                                     Path(runs["ours"][0]["output"])))
        result["agreement"] = agreement
        print_agreement(agreement)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\ndetails: {out / 'results.json'}")
    if failed:
        return 1
    if args.strict and agreement is not None and not agreement["ok"]:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
