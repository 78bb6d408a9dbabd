#!/usr/bin/env python3
"""``totalseg_serve`` against ``totalseg_batch`` on the same queue of cases, and the first job's latency.

    python3 bench/serve.py --home HOME [--input IMG] [--n N] [--rounds R] [--out DIR] [-d cpu] -- <batch flags>

(batch flags, e.g. ``-- --fastest --ml``).

The queue is N copies of the input. Both sides start cold (a fresh process that loads the models once), each
with its own fresh copy of HOME:

* batch: ``totalseg_batch -i case*.nii.gz -o OUT/batch <flags> -d DEVICE -q``, wall time of the process;
* service: ``totalseg_serve`` started, the N jobs uploaded as soon as /api/health answers, wall time from the
  start of the process until the last job is done; the first job's latency is from the start until it is done.
  Then N more jobs on the warm service: its time per case with the models already loaded.

Printed and written to OUT/results.json: both wall times, their ratio, the service's overhead per case
((service - batch) / N), the first job's latency, the warm service's seconds per case, and CPU seconds
(user + system, every process of each side) per case: a figure that other load on the machine moves less.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared/data/totalseg_reference/example_ct_sm.nii.gz"
# batch flag -> totalsegmentator() keyword option (the ones a queue is usually run with)
FLAGS = {"--fast": ("fast", True), "-f": ("fast", True), "--fastest": ("fastest", True), "-ff": ("fastest", True),
         "--ml": ("ml", True), "-ml": ("ml", True), "--statistics": ("statistics", True), "-s": ("statistics", True)}


def _fresh_home(home: Path, target: Path) -> Path:
    shutil.copytree(home, target)
    return target


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes and their waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_batch(cases: list[Path], out: Path, home: Path, flags: list[str], device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of totalseg_batch on ``cases``."""
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(home)}
    cpu, start = _children_cpu(), time.perf_counter()
    subprocess.run(["totalseg_batch", "-i", *map(str, cases), "-o", str(out), *flags, "-d", device, "-q"],
                   env=env, check=True)
    return time.perf_counter() - start, _children_cpu() - cpu


def _wait_all(client, ids: list[str], poll: float = 0.2) -> dict[str, float]:
    """{job id: time.perf_counter() when it was seen done}; raises if one fails."""
    done: dict[str, float] = {}
    while len(done) < len(ids):
        for job in client.get("/api/jobs").json():
            if job["id"] in ids and job["id"] not in done and job["state"] in ("done", "failed", "cancelled"):
                if job["state"] != "done":
                    raise RuntimeError(f"job {job['id']} {job['state']}: {job['error']}")
                done[job["id"]] = time.perf_counter()
        time.sleep(poll)
    return done


def _submit(client, case: Path, options: dict) -> str:
    with open(case, "rb") as f:
        answer = client.post("/api/jobs", files={"file": (case.name, f)}, data={"options": json.dumps(options)})
    answer.raise_for_status()
    return answer.json()["id"]


def run_service(cases: list[Path], data: Path, home: Path, options: dict, device: str) -> dict:
    import httpx

    port = _free_port()
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(home)}
    env.pop("TOTALSEG_SERVE_TOKEN", None)
    cpu, start = _children_cpu(), time.perf_counter()
    process = subprocess.Popen(["totalseg_serve", "--data", str(data), "--port", str(port), "-d", device, "-q"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while True:
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            answering = time.perf_counter() - start
            ids = [_submit(client, case, options) for case in cases]
            done = _wait_all(client, ids)
            cold = max(done.values()) - start
            first = done[ids[0]] - start
            warm_start = time.perf_counter()
            warm_ids = [_submit(client, case, options) for case in cases]
            warm = max(_wait_all(client, warm_ids).values()) - warm_start
    finally:
        process.terminate()  # the service waits for its worker: both are counted in the CPU seconds
        process.wait(30)
    return {"answering_s": answering, "first_job_s": first, "queue_s": cold, "warm_queue_s": warm,
            "cpu_s": _children_cpu() - cpu}


def _figures(batch: float, batch_cpu: float, service: dict, n: int) -> dict:
    return {"batch_s": round(batch, 2), **{k: round(v, 2) for k, v in service.items()},
            "batch_cpu_s_per_case": round(batch_cpu / n, 3),
            "service_cpu_s_per_job": round(service["cpu_s"] / (2 * n), 3),
            "ratio_service_to_batch": round(service["queue_s"] / batch, 3),
            "overhead_per_case_s": round((service["queue_s"] - batch) / n, 3),
            "warm_s_per_case": round(service["warm_queue_s"] / n, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, default=os.environ.get("TOTALSEG_HOME_DIR"), help="weights home (copied)")
    p.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    p.add_argument("--n", type=int, default=8, help="cases in the queue (default 8)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("-d", "--device", default="cpu")
    p.add_argument("--rounds", type=int, default=1,
                   help="batch and service taken in turns this many times (on a busy machine: medians)")
    p.add_argument("flags", nargs="*", help="totalseg_batch flags after --, e.g. -- --fastest --ml")
    args = p.parse_args()
    unknown = [f for f in args.flags if f not in FLAGS]
    if args.home is None or unknown:
        p.error(f"give --home (or $TOTALSEG_HOME_DIR); flags known here: {' '.join(FLAGS)}")
    options = dict(FLAGS[f] for f in args.flags)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_serve_"))
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(args.n):
        case = out / "cases" / f"case{i:03d}.nii.gz"
        case.parent.mkdir(exist_ok=True)
        shutil.copyfile(args.input, case)
        cases.append(case)

    rounds = []
    for r in range(args.rounds):  # in turns, so that a change in the machine's other load hits both sides
        sides = {"batch": lambda: run_batch(cases, out / f"batch{r}", _fresh_home(args.home, out / f"home_b{r}"),
                                            args.flags, args.device),
                 "service": lambda: run_service(cases, out / f"service{r}", _fresh_home(args.home, out / f"home_s{r}"),
                                                options, args.device)}
        order = ["batch", "service"] if r % 2 == 0 else ["service", "batch"]  # and each goes first in turn
        got = {side: sides[side]() for side in order}
        (batch, batch_cpu), service = got["batch"], got["service"]
        rounds.append(_figures(batch, batch_cpu, service, args.n))
        print(json.dumps(rounds[-1]), flush=True)
    result = {"input": str(args.input), "cases": args.n, "options": options, "device": args.device,
              "median": {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}, "rounds": rounds}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
