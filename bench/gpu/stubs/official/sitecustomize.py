"""Start-up hook for the OFFICIAL tool's runs in bench/gpu/run.sh (this folder is first on their PYTHONPATH,
so every Python process of such a run, nnU-Net's spawned workers included, loads it).

1. Hides cupy and cucim. The lent GPU machine's image has cupy (and could have cucim); TotalSegmentator's
   resampling.py tests `importlib.util.find_spec("cupy") is not None` (and "cucim") at import time and then
   resamples on the GPU with cucim instead of scipy on the CPU: a different code path than the official
   CPU figures and our package use. A stub module named cupy would still be *found* by find_spec, so instead
   the standard path finder is wrapped: for these names it answers "not found" (find_spec -> None,
   `import cupy` -> ModuleNotFoundError); everything else is looked up as usual.
2. Dry run only (BENCH_TORCHVISION_SHIM=1, set by run.sh --dry-run): the torchvision import fix of
   bench/official_env.sh (PyPI's CUDA torchvision next to a CPU torch). On the device torchvision is a
   matching CUDA build and this is not enabled.
3. With BENCH_CUDNN_DETERMINISTIC=1: cuDNN's algorithm choice pinned (../common/cudnn_pin.py).
4. Then runs the interpreter's own sitecustomize, if there is one further down sys.path (e.g. Ubuntu's).
"""
import importlib.machinery
import os
import sys

_HIDDEN = ("cupy", "cupyx", "cupy_backends", "cucim")


class _Delegating(type):
    def __getattr__(cls, name):  # find_distributions (importlib.metadata), invalidate_caches, ...
        return getattr(importlib.machinery.PathFinder, name)


class _PathFinderWithoutCupy(metaclass=_Delegating):
    """importlib.machinery.PathFinder, except that the hidden top-level names are never found (their
    package metadata stays visible: only imports are refused)."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.partition(".")[0] in _HIDDEN:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, path, target)


sys.meta_path[:] = [_PathFinderWithoutCupy if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
for _name in list(sys.modules):
    if _name.partition(".")[0] in _HIDDEN:
        del sys.modules[_name]


if os.environ.get("BENCH_TORCHVISION_SHIM") == "1":
    import importlib.abc

    _tv_lib = None

    class _TorchvisionShim(importlib.abc.MetaPathFinder):
        """Just before torchvision._meta_registrations is imported, and only if torchvision has no ops,
        define the schemas of the two ops it registers fake kernels for (see bench/official_env.sh)."""

        def find_spec(self, fullname, path=None, target=None):
            global _tv_lib
            if fullname == "torchvision._meta_registrations":
                try:
                    sys.meta_path.remove(self)
                except ValueError:
                    pass
                try:
                    import torch
                    import torchvision.extension as ext
                    if not ext._has_ops() and _tv_lib is None:
                        _tv_lib = torch.library.Library("torchvision", "DEF")
                        for op in ("nms", "qnms"):
                            _tv_lib.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                except Exception as e:  # never break the import because of the shim
                    print(f"bench sitecustomize torchvision shim: {e!r}", file=sys.stderr)
            return None

    sys.meta_path.insert(0, _TorchvisionShim())


def _chain_next_sitecustomize():
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(entry or os.curdir)
        if folder == here:
            continue
        candidate = os.path.join(folder, "sitecustomize.py")
        if os.path.isfile(candidate):
            try:
                with open(candidate, "rb") as f:
                    code = compile(f.read(), candidate, "exec")
                exec(code, {"__name__": "sitecustomize", "__file__": candidate})
            except Exception as e:
                print(f"bench sitecustomize: {candidate} failed: {e!r}", file=sys.stderr)
            return


try:  # ../common is on the runs' PYTHONPATH too; the pin acts with BENCH_CUDNN_DETERMINISTIC=1 only
    import cudnn_pin
except ImportError:
    pass
else:
    cudnn_pin.pin()
_chain_next_sitecustomize()
