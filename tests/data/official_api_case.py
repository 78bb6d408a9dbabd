"""One oracle case made through the official Python API (for options it has no flag for).

Run with the official package's Python, the weights home in TOTALSEG_HOME_DIR:
    python official_api_case.py INPUT OUTPUT STATS_JSON '{"fast": true, ...}'
"""
import json
import sys


def main() -> None:
    from totalsegmentator.python_api import totalsegmentator

    source, output, stats, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    totalsegmentator(source, output, statistics=stats, device="cpu", quiet=True, **options)


if __name__ == "__main__":  # the official run starts worker processes that import this file again
    main()
