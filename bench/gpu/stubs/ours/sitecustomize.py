"""Start-up hook for OUR runs in bench/gpu/run.sh, on their PYTHONPATH only when BENCH_CUDNN_DETERMINISTIC=1:
pins cuDNN's algorithm choice (stubs/common/cudnn_pin.py), as the official runs' hook does."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
try:
    import cudnn_pin
finally:
    del sys.path[0]
cudnn_pin.pin()
