#!/usr/bin/env python3
"""A cohort through ``totalseg_batch`` against a shell loop of the official ``TotalSegmentator``.

    python3 bench/cohort.py --home HOME [--input IMG ...] [--n N] [--out DIR] [--only ours|official]
        [--official CMD] -- <TotalSegmentator options, e.g. --fast --ml>

The cohort is N cases: the inputs repeated (hard links, else copies) as case000, case001, ... . Both sides get
the same options with ``-d cpu``, each its own fresh copy of HOME, and are measured in the same run by
compare.py's wrapper (wall time, peak RSS of the largest process, sampled PSS of the process tree):

* ours: ``totalseg_batch -i COHORT -o OUT/ours <options> -d cpu -q``, in a process that also adds up the
  time spent in the networks (``Predictor.model_labels``), so that the time outside them is known;
* official: ``for case: TotalSegmentator -i case -o OUT/official/<case>[.nii.gz] <options> -d cpu -q``.

Printed and written to OUT/results.json: cases per hour of each side and the ratio, peak RSS, and per case:
wall time, network time (ours) and the time outside the networks (ours: wall minus networks; official: its
wall time minus our network time, an estimate: the arithmetic of the networks is the same).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from compare import MIB, REPO, WRAPPER, copy_home, wants_ml  # noqa: E402

DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_reference" / "example_ct_sm.nii.gz"
DEFAULT_OFFICIAL = str(Path.home() / ".cache/totalseg/official-2.18.0-torch2.14.1-py3.11/bin/TotalSegmentator")

# Runs totalseg_batch and writes the seconds spent in the networks (all cases) to argv[1].
PROBE = r'''
import json, sys, threading, time
from totalseg.run.predictor import Predictor
spent, lock, inner = [0.0], threading.Lock(), Predictor.model_labels
def timed(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return inner(self, *args, **kwargs)
    finally:
        with lock:
            spent[0] += time.perf_counter() - start
Predictor.model_labels = timed
from totalseg.cli.batch import main
rc = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"network_s": spent[0]}, f)
sys.exit(rc)
'''


def make_cohort(inputs: list[Path], n: int, folder: Path) -> list[Path]:
    """N case files named case000... (the inputs in turn)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cases = []
    for k in range(n):
        src = inputs[k % len(inputs)]
        dst = folder / f"case{k:03d}{''.join(src.suffixes[-2:]) if src.name.endswith('.nii.gz') else src.suffix}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy(src, dst)
        cases.append(dst)
    return cases


def measure(cmd: list[str], run_dir: Path, env: dict) -> dict:
    """One wrapped run: wall time, peak RSS, tree PSS (compare.py's wrapper)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.json"
    (run_dir / "command.txt").write_text(" ".join(shlex.quote(c) for c in cmd) + "\n")
    with open(run_dir / "stdout.log", "wb") as so, open(run_dir / "stderr.log", "wb") as se:
        subprocess.run([sys.executable, "-c", WRAPPER, str(metrics)] + cmd, stdout=so, stderr=se, env=env)
    return json.loads(metrics.read_text())


def run_ours(cohort: Path, options: list[str], out: Path, home: Path) -> dict:
    env = dict(os.environ, TOTALSEG_HOME_DIR=str(home),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    net = out / "network.json"
    cmd = [sys.executable, "-c", PROBE, str(net), "-i", str(cohort), "-o", str(out / "cases"), *options,
           "-d", "cpu", "-q"]
    m = measure(cmd, out, env)
    m["network_s"] = json.loads(net.read_text())["network_s"] if net.exists() else None
    return m


def run_official(official: str, cases: list[Path], options: list[str], out: Path, home: Path) -> dict:
    """The shell loop a user writes today, timed as one command."""
    suffix = ".nii.gz" if wants_ml(options) else ""
    opts = " ".join(shlex.quote(o) for o in options)
    lines = [f"{shlex.quote(official)} -i {shlex.quote(str(c))} -o {shlex.quote(str(out / 'cases' / (c.name.split('.')[0] + suffix)))} "
             f"{opts} -d cpu -q || echo FAILED {c.name} >&2" for c in cases]
    (out / "cases").mkdir(parents=True, exist_ok=True)
    script = out / "loop.sh"
    script.write_text("set -u\n" + "\n".join(lines) + "\n")
    return measure(["bash", str(script)], out, dict(os.environ, TOTALSEG_HOME_DIR=str(home)))


def summarize(runs: dict, n: int) -> dict:
    res = {"cases": n}
    for tool, m in runs.items():
        per_case = m["wall_s"] / n
        row = {"wall_s": round(m["wall_s"], 2), "cases_per_hour": round(3600 / per_case, 1),
               "per_case_s": round(per_case, 3), "peak_rss_mib": round(m["maxrss_kib"] / 1024),
               "tree_pss_mib": round(m["tree_pss_sampled_bytes"] / MIB), "rc": m["rc"]}
        if m.get("network_s") is not None:
            row["network_per_case_s"] = round(m["network_s"] / n, 3)
            row["outside_networks_per_case_s"] = round((m["wall_s"] - m["network_s"]) / n, 3)
        res[tool] = row
    if "ours" in res and "official" in res:
        ours, off = res["ours"], res["official"]
        res["cases_per_hour_ratio"] = round(ours["cases_per_hour"] / off["cases_per_hour"], 2)
        if "network_per_case_s" in ours:
            off["outside_networks_per_case_s_est"] = round(off["per_case_s"] - ours["network_per_case_s"], 3)
            res["ours_outside_vs_official_loop_per_case"] = round(
                ours["outside_networks_per_case_s"] / off["per_case_s"], 3)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, required=True, help="weights home (copied fresh for each side)")
    p.add_argument("--input", type=Path, nargs="+", default=[DEFAULT_INPUT], help="images to repeat")
    p.add_argument("--n", type=int, default=20, help="cases (default 20)")
    p.add_argument("--out", type=Path, default=BENCH / "work" / f"cohort-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--only", choices=["ours", "official"])
    p.add_argument("--official", default=DEFAULT_OFFICIAL, help="the official TotalSegmentator command")
    p.add_argument("options", nargs="*", help="TotalSegmentator options (after --)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cases = make_cohort(args.input, args.n, args.out / "cohort")
    runs = {}
    for tool in ("official", "ours"):
        if args.only not in (None, tool):
            continue
        home = copy_home(args.home, args.out / f"home-{tool}")
        print(f"[{tool}] {args.n} cases ...", file=sys.stderr, flush=True)
        if tool == "ours":
            runs[tool] = run_ours(args.out / "cohort", args.options, args.out / tool, home)
        else:
            runs[tool] = run_official(args.official, cases, args.options, args.out / tool, home)
        shutil.rmtree(home, ignore_errors=True)
        print(f"[{tool}] rc {runs[tool]['rc']}, {runs[tool]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    result = {"options": args.options, "inputs": [str(i) for i in args.input], **summarize(runs, args.n)}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if all(m["rc"] == 0 for m in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
