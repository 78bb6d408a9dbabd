#!/usr/bin/env python3
"""Where a run's memory goes: its resident set over time, between the lines it prints.

    python3 bench/rss_timeline.py [--step MIB] [--every S] -- COMMAND...

Runs COMMAND (e.g. ``python3 -m totalseg.cli.totalsegmentator ... -v``, whose stage lines say what runs when),
samples the resident set of its main process every ``--every`` seconds and prints, with seconds since the
start, each of its output lines and each sampled RSS that differs from the last one printed by at least
``--step`` MiB; at the end the peak, when it happened and the last line printed before it. A diagnostic for
finding the stage that sets the peak (bench/README.md, "chest CT's memory"); ``bench/engines.py`` gives the
figures against the official tool.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import psutil


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--step", type=int, default=150, help="print an RSS sample when it moved this many MiB")
    ap.add_argument("--every", type=float, default=0.05, help="seconds between samples")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = {"peak": 0, "at": 0.0, "line": "", "before": "", "shown": 0}
    lock = threading.Lock()

    def say(text: str) -> None:
        print(f"{time.perf_counter() - start:8.2f}s {text}", flush=True)

    def sample() -> None:
        process = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = process.memory_info().rss >> 20
            except psutil.Error:
                return
            with lock:
                if rss > state["peak"]:
                    state.update(peak=rss, at=time.perf_counter() - start, before=state["line"])
                if abs(rss - state["shown"]) >= args.step:
                    state["shown"] = rss
                    say(f"RSS {rss} MiB")
            time.sleep(args.every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        with lock:
            state["line"] = line.strip()
            say(f"| {line.rstrip()}")
    rc = proc.wait()
    sampler.join()
    print(f"peak RSS {state['peak']} MiB at {state['at']:.1f} s, after: {state['before'] or '(no output yet)'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
