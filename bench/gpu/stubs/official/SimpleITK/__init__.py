"""Stand-in for SimpleITK, for bench/gpu/run.sh only (on PYTHONPATH of the OFFICIAL tool's runs).

Why: nnunetv2 2.8.1 and acvl_utils import SimpleITK at module level (nnunetv2.imageio.simpleitk_reader_writer,
default_preprocessor, ...), but TotalSegmentator 2.18.0 reads and writes NIfTI through nibabel
(NibabelIOWithReorient) and never calls SimpleITK on the `-i ct.nii.gz --ml` path. The real wheel is ~50 MiB,
which does not fit into the 64 MiB that travel to the lent GPU machine together with the 36 MiB chest CT.

Importing this module works; using any attribute raises AttributeError with this explanation, so a code
path that really needs SimpleITK fails loudly instead of computing something else.
"""

__version__ = "0.0.0+bench-gpu-stub"
BENCH_GPU_STUB = True


def __getattr__(name):
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"SimpleITK.{name}: SimpleITK is a stub in the GPU benchmark (bench/gpu/stubs/official/SimpleITK); "
        "this code path needs the real package, which does not fit into the files carried to the device")
