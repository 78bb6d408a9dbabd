"""``totalseg_serve``: the segmentation service (REST API, web page, optional DICOM node) with one worker process."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from totalseg.cli.common import run
from totalseg.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="totalseg_serve",
        description="Serve TotalSegmentator: a web page at /, a REST API under /api (OpenAPI docs at /docs) and "
                    "optionally a DICOM node. Jobs run one at a time in a worker process that keeps the models "
                    "loaded; jobs and files are kept in --data and survive a restart.")
    a = p.add_argument
    a("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; another one needs --token)")
    a("--port", type=int, default=8000, help="HTTP port (default 8000)")
    a("--data", type=Path, default=Path("totalseg_service"), metavar="DIR",
      help="folder of the jobs database and files (default ./totalseg_service)")
    a("--token", default=None,
      help="token every call but /api/health must bring (Authorization: Bearer T); default $TOTALSEG_SERVE_TOKEN")
    a("-d", "--device", default="gpu", help="device of the worker, as for TotalSegmentator (default gpu)")
    a("--engine", default=None, choices=["exact", "fast"], help="engine of the worker, as for TotalSegmentator")
    a("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
      help="run the jobs on a Ray cluster through totalseg_batch's Ray path (default address: auto)")
    a("--allow-root", type=Path, default=None, metavar="DIR",
      help="allow jobs on server paths (JSON field 'path'), only under DIR; default: uploads only")
    a("--max-upload-mb", type=float, default=2048, metavar="MB", help="largest upload accepted (default 2048)")
    a("--threads", type=int, default=None, help="torch threads of the worker (default: all cores)")
    a("-q", "--quiet", action="store_true", help="no access log")
    g = p.add_argument_group("DICOM node (C-STORE in, C-STORE of the results out)")
    g.add_argument("--dicom-port", type=int, default=None, metavar="N", help="start a DICOM node on port N")
    g.add_argument("--dicom-aet", default="TOTALSEG", metavar="AET", help="the node's AE title (default TOTALSEG)")
    g.add_argument("--dicom-host", default=None, metavar="H",
                   help="address the DICOM node listens on (default: --host; 0.0.0.0 for a PACS on another machine)")
    g.add_argument("--dicom-dest", default=None, metavar="AET@HOST:PORT", help="where the results are sent")
    g.add_argument("--dicom-options", default='{"output_type": ["dicom_seg"]}', metavar="JSON",
                   help="options of the jobs from the node (default {\"output_type\": [\"dicom_seg\"]})")
    g.add_argument("--dicom-quiet-seconds", type=float, default=10.0, metavar="S",
                   help="a series is complete when nothing arrived for S seconds (default 10)")
    g.add_argument("--dicom-allowed-aets", nargs="+", default=None, metavar="AET",
                   help="calling AE titles accepted (default: any)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args), interrupted="stopped")


def config_from_args(args) -> dict:
    """The service's settings, checked: a user's mistake is a one-line UserError."""
    token = args.token if args.token is not None else os.environ.get("TOTALSEG_SERVE_TOKEN") or None
    if args.host not in LOOPBACK and not token:
        raise UserError(f"refusing to listen on {args.host} without a token; give --token or $TOTALSEG_SERVE_TOKEN")
    if args.engine == "fast" and args.device != "cpu" and not args.ray:
        raise UserError("--engine fast runs on the CPU; use -d cpu with it, or --engine exact on the GPU")
    if args.max_upload_mb <= 0:
        raise UserError("--max-upload-mb must be positive")
    root = None
    if args.allow_root is not None:
        root = args.allow_root.resolve()
        if not root.is_dir():
            raise UserError(f"--allow-root {args.allow_root} is not a folder")
    return {"data": args.data.absolute(), "token": token, "device": args.device, "engine": args.engine,
            "ray": args.ray, "allow_root": root, "max_upload": int(args.max_upload_mb * 2**20),
            "threads": args.threads}


def dicom_settings(args) -> dict | None:
    """Keyword arguments of ``start_dicom_node`` (without the store), or None without --dicom-port."""
    if args.dicom_port is None:
        return None
    from totalseg import check_options

    try:
        options = json.loads(args.dicom_options)
    except json.JSONDecodeError:
        raise UserError("--dicom-options must be a JSON object, e.g. '{\"fast\": true}'") from None
    if not isinstance(options, dict):
        raise UserError("--dicom-options must be a JSON object, e.g. '{\"fast\": true}'")
    check_options(options)
    return {"port": args.dicom_port, "aet": args.dicom_aet, "dest": args.dicom_dest, "options": options,
            "quiet_seconds": args.dicom_quiet_seconds, "allowed_aets": args.dicom_allowed_aets,
            "host": args.host if args.dicom_host is None else args.dicom_host}


def _run(args) -> int:
    from totalseg.serve.app import serve

    serve(config_from_args(args), dicom_settings(args), port=args.port, host=args.host, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
