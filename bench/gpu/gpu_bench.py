#!/usr/bin/env python3
"""Helper of bench/gpu/prepare.sh and bench/gpu/run.sh (standard library only, plus nibabel/numpy for the
agreement). Subcommands:

    srchash ROOT                 hash of our package's sources (totalseg/, totalsegmentator/, pyproject.toml)
    check-wheels DIR...          Requires-Dist of the wheels: which are on the device, carried, or left out
    make-template SRC DST IDS..  a minimal weights template for make_random_weights.py (plans/dataset json
                                 and a checkpoint holding only the trainer name)
    run ...                      the benchmark: official and ours per option set, wall time, peak GPU memory,
                                 voxel agreement; table on stdout, JSON in --out/gpu_results.json

`run` never imports torch (no CUDA context of its own in the GPU memory figures).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

MIB = 1024 * 1024

# Python packages on the lent nvidia-h200 machine (/work/.library/device/KINDS.md, read 2026-11-17).
DEVICE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()

# Declared dependencies that are deliberately NOT carried (see bench/README.md, "GPU benchmark (lent device)").
LEFT_OUT = {
    "simpleitk": "50 MiB; imported by nnunetv2 but unused on the NIfTI path: stub bench/gpu/stubs/official/SimpleITK",
    "imagecodecs": "27 MiB; optional import (tifffile try/except), TIFF only",
    "python-gdcm": "13 MiB; optional import (pydicom try/except), DICOM decoding only",
    "fury": "preview rendering only (pulls vtk, 88 MiB); not imported on this path",
    "dipy": "10 MiB; not imported on this path",
    "blosc": "TotalSegmentator serialization_utils only; not imported on this path",
    "argparse": "a Python 2 backport: on PYTHONPATH it would shadow the standard library",
    "future": "batchgenerators' declared dependency, not imported",
    "unittest2": "batchgenerators' declared dependency, not imported",
    "pydantic": "blosc2's declared dependency, not imported on this path",
    "torch": "on the device", "xgboost": "extra 'mcp' only", "mcp": "extra only", "uvicorn": "extra only",
    # ours (pyproject.toml): DICOM output / phase classifiers only, never imported by a NIfTI --ml run
    "pylibjpeg": "ours: compressed DICOM input only", "pylibjpeg-openjpeg": "ours: compressed DICOM input only",
    "pylibjpeg-libjpeg": "ours: compressed DICOM input only", "pylibjpeg-rle": "ours: compressed DICOM input only",
    "highdicom": "ours: DICOM SEG output only", "xgboost-cpu": "ours: phase/modality classifiers only",
}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------------------ srchash

def source_hash(root: Path) -> str:
    h = hashlib.sha256()
    files = [root / "pyproject.toml"]
    for pkg in ("totalseg", "totalsegmentator"):
        files += [p for p in (root / pkg).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")]
    for p in sorted(files):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- check-wheels

def wheel_requirements(whl: Path) -> tuple[str, list[str]]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
    reqs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        if "extra ==" in req or "extra==" in req:
            continue
        if re.search(r"python_version\s*<\s*['\"]3\.(\d|1[012])['\"]", req):
            continue  # only for Pythons older than the device's 3.12
        reqs.append(canon(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0]))
    return canon(name), reqs


def check_wheels(folders: list[Path]) -> int:
    wheels = sorted(w for f in folders for w in f.glob("*.whl"))
    carried = {}
    for w in wheels:
        name, reqs = wheel_requirements(w)
        carried[name] = (w, reqs)
    device = {canon(n) for n in DEVICE_PACKAGES}
    missing = []
    for name, (w, reqs) in sorted(carried.items()):
        for r in reqs:
            if r in carried or r in device:
                continue
            why = LEFT_OUT.get(r)
            if why is None:
                missing.append(f"{name} -> {r}")
    dup = [n for n in carried if n in device and n != "timm"]
    for n in dup:
        print(f"  note: {n} is also on the device; the carried one shadows it")
    if missing:
        print("  NOT covered (neither carried, on the device, nor listed as left out):")
        for m in missing:
            print("    " + m)
        return 1
    print(f"  {len(carried)} wheels; every Requires-Dist is carried, on the device, or deliberately left out")
    return 0


# ------------------------------------------------------------------------------------------ make-template

def make_template(src: Path, dst: Path, ids: list[int]) -> None:
    """plans.json + dataset.json of each model and a checkpoint with only the trainer name: all that
    bench/make_random_weights.py reads from its --template (a few KB instead of 3 MB of tiny weights)."""
    import torch  # here only (prepare.sh), not on the device

    results = src / "nnunet" / "results"
    for i in ids:
        (model,) = results.glob(f"Dataset{i:03d}_*")
        (trainer_dir,) = [p for p in model.iterdir() if p.is_dir() and p.name.endswith("__3d_fullres")]
        out = dst / trainer_dir.relative_to(src)
        (out / "fold_0").mkdir(parents=True, exist_ok=True)
        for f in ("plans.json", "dataset.json"):
            shutil.copyfile(trainer_dir / f, out / f)
        ckpt = torch.load(trainer_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        torch.save({"trainer_name": ckpt.get("trainer_name") or trainer_dir.name.split("__")[0]},
                   out / "fold_0" / "checkpoint_final.pth")
    for f in ("config.json",):
        if (src / f).exists():
            shutil.copyfile(src / f, dst / f)


# -------------------------------------------------------------------------------------------------- run

class Sampler:
    """Polls the GPU's used memory (NVML from nvidia-ml-py, else `nvidia-smi -lms 100`) and the summed RSS
    of a process tree while a run goes on."""

    def __init__(self, log):
        self.kind = None
        self.gpu_name = None
        self.log = log
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.gpu_name = name.decode() if isinstance(name, bytes) else name
            self.kind = "nvml"
        except Exception as e:
            if shutil.which("nvidia-smi"):
                self.kind = "nvidia-smi"
                try:
                    self.gpu_name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader",
                                                    "-i", "0"], capture_output=True, text=True,
                                                   timeout=20).stdout.strip() or None
                except Exception:
                    pass
            else:
                log(f"  (no GPU memory figures: no NVML ({type(e).__name__}) and no nvidia-smi)")

    def used_mib_once(self):
        if self.kind == "nvml":
            return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / MIB
        if self.kind == "nvidia-smi":
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, timeout=20).stdout
            return float(out.split()[0])
        return None

    def idle_mib(self, seconds: float = 1.0, settle_s: float = 8.0):
        """The GPU's used memory before a run: sampled for ``seconds``, longer (up to ``settle_s``) while it
        still changes (memory of the previous run's processes being released); median of the last samples."""
        if self.kind is None:
            return None
        values = []
        start = time.monotonic()
        while True:
            try:
                values.append(self.used_mib_once())
            except Exception:
                break
            elapsed = time.monotonic() - start
            recent = values[-5:]
            if elapsed >= settle_s or (elapsed >= seconds and len(recent) == 5 and max(recent) - min(recent) <= 8):
                break
            time.sleep(0.1)
        if not values:
            return None
        recent = sorted(values[-5:])
        return recent[len(recent) // 2]

    def start(self, pid: int) -> None:
        self.peak_gpu = None
        self.peak_rss = 0
        self._stop = threading.Event()
        self._smi = None
        if self.kind == "nvidia-smi":
            self._smi = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-i", "0", "-lms", "100"], stdout=subprocess.PIPE, text=True,
                                         stderr=subprocess.DEVNULL)
            threading.Thread(target=self._read_smi, daemon=True).start()
        self._thread = threading.Thread(target=self._poll, args=(pid,), daemon=True)
        self._thread.start()

    def _read_smi(self):
        for line in self._smi.stdout:
            try:
                v = float(line.split()[0])
            except (ValueError, IndexError):
                continue
            self.peak_gpu = v if self.peak_gpu is None else max(self.peak_gpu, v)

    def _poll(self, pid: int):
        tick = 0
        while not self._stop.is_set():
            if self.kind == "nvml":
                try:
                    v = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / MIB
                    self.peak_gpu = v if self.peak_gpu is None else max(self.peak_gpu, v)
                except Exception:
                    pass
            if tick % 4 == 0:
                try:
                    self.peak_rss = max(self.peak_rss, tree_rss(pid))
                except Exception:
                    pass
            tick += 1
            self._stop.wait(0.05)

    def stop(self):
        self._stop.set()
        self._thread.join()
        if self._smi is not None:
            self._smi.terminate()
            try:
                self._smi.wait(5)
            except subprocess.TimeoutExpired:
                self._smi.kill()
        return self.peak_gpu, self.peak_rss / MIB


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def tree_rss(root: int) -> int:
    children: dict[int, list[int]] = {}
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
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
        stack.extend(children.get(pid, ()))
    return total


def copy_home(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=False)
    for root, dirs, files in os.walk(dst):
        for n in dirs + files:
            p = os.path.join(root, n)
            os.chmod(p, os.stat(p).st_mode | 0o200)


def clean_progress(text: str) -> str:
    """tqdm's carriage-return redraws: keep only the last state of each line."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


OFFICIAL_MAIN = ("import sys; sys.argv[0] = 'TotalSegmentator'; "
                 "from totalsegmentator.bin.TotalSegmentator import main; sys.exit(main())")


def tool_command(tool: str, python: str) -> list[str]:
    if tool == "official":
        return [python, "-c", OFFICIAL_MAIN]
    return [python, "-m", "totalseg.cli.totalsegmentator"]


def run_tool(args, sampler: Sampler, tool: str, key: str, options: list[str], timeout_s: float, log) -> dict:
    run_dir = args.work / key / tool
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    home = args.work / "homes" / f"{key}-{tool}"
    t = time.perf_counter()
    copy_home(args.home, home)
    copy_s = time.perf_counter() - t
    output = run_dir / "seg.nii.gz"
    cmd = tool_command(tool, args.python) + ["-i", str(args.input), "-o", str(output)] + options + ["-d", args.device]
    if shutil.which("timeout"):
        cmd = ["timeout", "-k", "15", f"{int(timeout_s)}"] + cmd
    env = dict(os.environ, TOTALSEG_HOME_DIR=str(home), PYTHONUNBUFFERED="1",
               PYTHONPATH=args.pp_official if tool == "official" else args.pp_ours)
    if tool == "official" and args.torchvision_shim:
        env["BENCH_TORCHVISION_SHIM"] = "1"
    else:
        env.pop("BENCH_TORCHVISION_SHIM", None)
    log(f"[{key} {tool}] PYTHONPATH={env['PYTHONPATH']} TOTALSEG_HOME_DIR={home} (copied in {copy_s:.1f} s)")
    log(f"[{key} {tool}] {' '.join(shlex.quote(c) for c in cmd)}")
    idle = sampler.idle_mib(1.0)
    log_file = run_dir / "tool.log"
    timed_out = False
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_file, "wb") as lf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdout=lf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler.start(proc.pid)
        try:
            rc = proc.wait(timeout=timeout_s + 30)
        except subprocess.TimeoutExpired:  # no coreutils timeout, or it did not end the tool
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            timed_out = True
        wall = time.perf_counter() - t0
        peak_gpu, peak_rss = sampler.stop()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the tool's process group (workers)
    except ProcessLookupError:
        pass
    timed_out = timed_out or rc in (124, 137, -9)
    shutil.rmtree(home, ignore_errors=True)
    text = clean_progress(log_file.read_text(errors="replace"))
    res = {"tool": tool, "options": options + ["-d", args.device], "command": cmd, "rc": rc,
           "timed_out": timed_out, "timeout_s": int(timeout_s), "wall_s": round(wall, 2),
           "cpu_s": round(cpu_s, 1),
           "gpu_idle_mib": idle, "gpu_peak_mib": peak_gpu,
           "gpu_peak_over_idle_mib": (round(peak_gpu - idle) if peak_gpu is not None and idle is not None else None),
           "host_tree_rss_peak_mib": round(peak_rss), "output": str(output) if output.exists() else None,
           "log_tail": text.splitlines()[-25:]}
    with open(args.runs_log, "a") as f:
        f.write(f"\n===== [{key} {tool}] rc={rc} wall={wall:.1f}s\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        f.write(text + "\n")
    status = "TIMED OUT" if timed_out else ("ok" if rc == 0 else f"FAILED (exit {rc})")
    gpu = f", GPU peak {res['gpu_peak_over_idle_mib']} MiB over idle {idle:.0f}" if res["gpu_peak_over_idle_mib"] is not None else ""
    log(f"[{key} {tool}] {status}: {wall:.1f} s (CPU {cpu_s:.0f} s){gpu}, "
        f"host tree RSS peak {res['host_tree_rss_peak_mib']} MiB")
    if rc != 0 or not output.exists():
        log(f"[{key} {tool}] last lines of its output:\n    " + "\n    ".join(text.splitlines()[-25:]))
    return res


def agreement(official: Path, ours: Path) -> dict:
    import nibabel as nib
    import numpy as np

    a_img, b_img = nib.load(str(official)), nib.load(str(ours))
    res = {"shape": [list(a_img.shape), list(b_img.shape)],
           "dtype": [str(a_img.get_data_dtype()), str(b_img.get_data_dtype())],
           "affine_max_abs_diff": float(np.abs(a_img.affine - b_img.affine).max())}
    if a_img.shape != b_img.shape:
        res["equal_fraction"] = None
        return res
    a = np.asarray(a_img.dataobj).astype(np.int64).ravel()
    b = np.asarray(b_img.dataobj).astype(np.int64).ravel()
    res["equal_fraction"] = float(np.count_nonzero(a == b) / a.size)
    k = int(max(a.max(), b.max(), 0)) + 1
    conf = np.bincount(a * k + b, minlength=k * k).reshape(k, k)
    n_a, n_b, inter = conf.sum(1), conf.sum(0), np.diag(conf)
    per = {}
    for lab in range(1, k):
        if n_a[lab] + n_b[lab]:
            per[lab] = {"dice": 2 * float(inter[lab]) / float(n_a[lab] + n_b[lab]),
                        "n_official": int(n_a[lab]), "n_ours": int(n_b[lab])}
    big = {lab: d for lab, d in per.items() if max(d["n_official"], d["n_ours"]) >= 50}
    res["labels"] = len(per)
    res["labels_ge_50"] = len(big)
    res["background_fraction"] = [float(n_a[0] / a.size), float(n_b[0] / b.size)]
    if big:
        worst = min(big, key=lambda lab: big[lab]["dice"])
        res["min_dice_ge_50"] = big[worst]["dice"]
        res["min_dice_label"] = worst
        res["min_dice_counts"] = [big[worst]["n_official"], big[worst]["n_ours"]]
    else:
        res["min_dice_ge_50"] = None
    res["labels_dice_below_1"] = sorted(
        ({"label": lab, **d} for lab, d in per.items() if d["dice"] < 1), key=lambda d: d["dice"])[:20]
    return res


def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def print_table(results: dict, log) -> None:
    log("")
    log(f"GPU benchmark ({results['mode']}): input {results['input']}")
    log(f"  {results.get('machine', {}).get('summary', '')}")
    head = (f"{'options':<12} {'wall off. s':>11} {'wall ours s':>11} {'ours/off.':>9} {'GPU off. MiB':>12} "
            f"{'GPU ours MiB':>12} {'equal voxels %':>15} {'min Dice (>=50 vox)':>20}")
    log(head)
    log("-" * len(head))
    for key, case in results["cases"].items():
        o, u, ag = case.get("official") or {}, case.get("ours") or {}, case.get("agreement") or {}

        def wall(r):
            if not r:
                return "-"
            if r.get("skipped"):
                return "skipped"
            if r.get("timed_out"):
                return f">{r['timeout_s']} TO"
            return f"{r['wall_s']:.1f}" if r.get("rc") == 0 else f"exit {r.get('rc')}"

        ratio = case.get("wall_ratio")
        eq = ag.get("equal_fraction")
        md = ag.get("min_dice_ge_50")
        dice = "-" if md is None else f"{md:.5f} (label {ag.get('min_dice_label')})"
        log(f"{' '.join(case['options']):<12} {wall(o):>11} {wall(u):>11} {fmt(ratio, '.3f'):>9} "
            f"{fmt(o.get('gpu_peak_over_idle_mib'), 'd'):>12} {fmt(u.get('gpu_peak_over_idle_mib'), 'd'):>12} "
            f"{fmt(None if eq is None else 100 * eq, '.4f'):>15} {dice:>20}")
    log("")
    log("GPU MiB: peak of the GPU's used memory during the run minus its idle level just before "
        "(NVML/nvidia-smi; CUDA context included). Wall: whole command, start-up to exit.")
    for key, case in results["cases"].items():
        ag = case.get("agreement") or {}
        if ag.get("equal_fraction") is not None:
            log(f"  {' '.join(case['options'])}: {ag['labels']} labels ({ag['labels_ge_50']} with >= 50 voxels), "
                f"background {100 * ag['background_fraction'][0]:.1f} % / {100 * ag['background_fraction'][1]:.1f} %, "
                f"shape {ag['shape'][0]}, dtype {ag['dtype'][0]} vs {ag['dtype'][1]}, "
                f"affine diff {ag['affine_max_abs_diff']:.1e}; labels with Dice < 1: "
                f"{len(ag['labels_dice_below_1'])}{'+' if len(ag['labels_dice_below_1']) == 20 else ''}")
        elif ag:
            log(f"  {' '.join(case['options'])}: outputs differ in shape {ag.get('shape')}")
    goals = results.get("goals", {})
    for name, g in goals.items():
        log(f"  goal {name}: {g}")


def cmd_run(args) -> int:
    args.work = args.work.resolve()
    args.out = args.out.resolve()
    args.input = args.input.resolve()
    args.home = args.home.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    args.runs_log = args.out / "gpu_runs_log.txt"
    args.runs_log.write_text("")
    for stale in args.out.glob("seg_*.nii.gz"):  # outputs of an earlier call in the same folder
        stale.unlink()
    results_path = args.out / "gpu_results.json"

    def log(msg=""):
        print(msg, flush=True)

    sampler = Sampler(log)
    cases = []
    for spec in args.case:
        key, _, opts = spec.partition(":")
        cases.append((key, shlex.split(opts)))
    results = {"mode": args.mode, "device_flag": args.device, "input": str(args.input), "home": str(args.home),
               "python": args.python, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "machine": json.loads(args.machine) if args.machine else {}, "cases": {}, "goals": {}}
    results["machine"]["gpu_name_nvml"] = sampler.gpu_name
    results["machine"]["gpu_memory_source"] = sampler.kind

    def save():
        results_path.write_text(json.dumps(results, indent=2, default=str))

    failed = False
    for key, opts in cases:
        case = results["cases"][key] = {"options": opts}
        for tool in ("official", "ours"):
            cap = args.cap_fast if "--fast" in opts or "-f" in opts else args.cap_ml
            left = args.deadline - time.time() - 10
            if left < args.min_run_s:
                log(f"[{key} {tool}] SKIPPED: {left:.0f} s left before the deadline (needs >= {args.min_run_s} s)")
                case[tool] = {"skipped": True, "rc": None}
                failed = True
                save()
                continue
            case[tool] = run_tool(args, sampler, tool, key, opts, min(cap, left), log)
            failed |= case[tool]["rc"] != 0 or case[tool]["output"] is None
            save()
        o, u = case.get("official", {}), case.get("ours", {})
        if o.get("rc") == 0 and u.get("rc") == 0:
            case["wall_ratio"] = round(u["wall_s"] / o["wall_s"], 4)
        if o.get("output") and u.get("output"):
            t = time.perf_counter()
            try:
                case["agreement"] = agreement(Path(o["output"]), Path(u["output"]))
            except Exception as e:
                case["agreement"] = {"error": repr(e)}
                failed = True
            ag = case["agreement"]
            if ag.get("equal_fraction") is not None:
                log(f"[{key}] agreement: {100 * ag['equal_fraction']:.4f} % equal voxels, min Dice "
                    f"{fmt(ag.get('min_dice_ge_50'), '.5f')} over {ag['labels_ge_50']} labels with >= 50 voxels "
                    f"({time.perf_counter() - t:.1f} s)")
            for tool in ("official", "ours"):
                src = Path(case[tool]["output"])
                if src.stat().st_size < 15 * MIB:
                    shutil.copyfile(src, args.out / f"seg_{key}_{tool}.nii.gz")
        save()

    for key in args.repeat_official:  # the official tool against itself: the GPU's own run-to-run noise
        case = results["cases"].get(key) or {}
        first = case.get("official") or {}
        cap = args.cap_fast if "--fast" in case.get("options", []) else args.cap_ml
        left = args.deadline - time.time() - 10
        if not first.get("output") or left < min(cap, first.get("wall_s", cap) * 1.5 + 20):
            log(f"[{key} official again] SKIPPED ({left:.0f} s left, or no first output)")
            continue
        again = run_tool(args, sampler, "official", f"{key}_again", case["options"], min(cap, left), log)
        results["official_again"] = results.get("official_again", {})
        results["official_again"][key] = {"run": again}
        if again.get("output"):
            try:
                ag = agreement(Path(first["output"]), Path(again["output"]))
            except Exception as e:  # the measured runs' figures matter more than this one
                log(f"[{key}] official run 1 vs run 2: comparison failed: {e!r}")
                continue
            results["official_again"][key]["agreement"] = ag
            log(f"[{key}] official run 1 vs run 2: {fmt(None if ag.get('equal_fraction') is None else 100 * ag['equal_fraction'], '.4f')} % "
                f"equal voxels, min Dice {fmt(ag.get('min_dice_ge_50'), '.5f')}")
        save()

    eq_ok = [c["agreement"]["equal_fraction"] >= 0.9999 for c in results["cases"].values()
             if (c.get("agreement") or {}).get("equal_fraction") is not None]
    ratios = [c["wall_ratio"] for c in results["cases"].values() if c.get("wall_ratio") is not None]
    results["goals"] = {
        "agreement >= 99.99 % equal voxels": ("MET" if len(eq_ok) == len(results["cases"]) and all(eq_ok)
                                              else "NOT MET")
        + f" ({sum(eq_ok)}/{len(results['cases'])} option sets compared and >= 99.99 %)",
        "wall <= 0.3 x official": ("MET" if len(ratios) == len(results["cases"]) and all(r <= 0.3 for r in ratios)
                                   else "NOT MET")
        + f" (ratios {', '.join(f'{r:.3f}' for r in ratios) or 'none'})",
    }
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results["all_runs_ok"] = not failed
    save()
    print_table(results, log)
    log(f"\nresults: {results_path}\nfull tool outputs: {args.runs_log}")
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("srchash")
    p.add_argument("root", type=Path)
    p = sub.add_parser("check-wheels")
    p.add_argument("folders", type=Path, nargs="+")
    p = sub.add_parser("make-template")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("ids", type=int, nargs="+")
    p = sub.add_parser("run")
    p.add_argument("--mode", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--device", required=True, help="-d value for both tools (gpu or cpu)")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--home", required=True, type=Path, help="weights home; each run gets a fresh copy")
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--pp-official", required=True, help="PYTHONPATH of the official runs")
    p.add_argument("--pp-ours", required=True, help="PYTHONPATH of our runs")
    p.add_argument("--case", action="append", required=True, help="KEY:OPTIONS, in the order to run")
    p.add_argument("--deadline", type=float, required=True, help="epoch seconds by which everything must end")
    p.add_argument("--cap-fast", type=float, default=150)
    p.add_argument("--cap-ml", type=float, default=300)
    p.add_argument("--min-run-s", type=float, default=30)
    p.add_argument("--repeat-official", action="append", default=[],
                   help="KEY: when time is left at the end, run the official tool again on that case and compare "
                        "its two outputs (the device's run-to-run noise)")
    p.add_argument("--torchvision-shim", action="store_true")
    p.add_argument("--machine", default="", help="JSON with facts about the machine")
    args = ap.parse_args(argv)
    if args.cmd == "srchash":
        print(source_hash(args.root.resolve()))
        return 0
    if args.cmd == "check-wheels":
        return check_wheels(args.folders)
    if args.cmd == "make-template":
        make_template(args.src, args.dst, args.ids)
        return 0
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
