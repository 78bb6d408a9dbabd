"""Start-up hook for OUR runs in bench/gpu/run.sh, on their PYTHONPATH (with ../common) only when
BENCH_CUDNN_DETERMINISTIC=1: pins cuDNN's algorithm choice (../common/cudnn_pin.py), as the official runs' hook does."""
import cudnn_pin

cudnn_pin.pin()
