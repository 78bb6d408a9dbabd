"""``totalseg_info``: which weights are installed, missing or incomplete, and the task registry.

With no option it lists, per task, the models ``totalseg_download_weights -t TASK`` fetches, their state in
the weights folder and their size on disk. The official options are kept: ``-lt`` lists the tasks, ``-cl``
the classes of ``-ta TASK``, and ``--json`` alone prints the registry as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

from totalseg.version import OFFICIAL_VERSION
from totalseg.cli.common import run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_info",
                                description="Installed weights per task, and the task registry.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-w", "--weights", action="store_true",
                      help="installed / missing / incomplete models per task with sizes (the default)")
    mode.add_argument("-lt", "--list-tasks", action="store_true", help="list the tasks")
    mode.add_argument("-cl", "--classes", action="store_true", help="list the classes of -ta TASK")
    p.add_argument("-ta", "--task", action="append", metavar="TASK", help="only this task (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def weights_report(tasks: list[str]) -> dict:
    """{"weights_folder", "tasks": {task: [{"id", "folder", "state", "bytes", "missing"}]}} for ``tasks``."""
    from totalseg import home
    from totalseg.install.status import MISSING, missing_files, model_state, size_on_disk
    from totalseg.registry import get_model, get_task

    weights = home.weights_dir()
    report = {"weights_folder": str(weights), "tasks": {}}
    for name in tasks:
        rows = []
        for model_id in get_task(name).download:
            model = get_model(model_id)
            state = model_state(model, weights)
            rows.append({"id": model.id, "folder": model.folder, "state": state,
                         "bytes": size_on_disk(weights / model.folder),
                         "missing": [] if state == MISSING else missing_files(model, weights)})
        report["tasks"][name] = rows
    return report


def format_weights_report(report: dict) -> str:
    rows = [(task, m) for task, models in report["tasks"].items() for m in models]
    width = max([len(t) for t, _ in rows] + [4]) + 2
    lines = [f"Weights folder: {report['weights_folder']}", "",
             f"{'TASK':<{width}}{'MODEL':<7}{'STATE':<12}{'SIZE':>10}  FOLDER"]
    previous = None
    for task, m in rows:
        size = _size(m["bytes"]) if m["bytes"] else "-"
        shown = task if task != previous else ""
        lines.append(f"{shown:<{width}}{m['id']:<7}{m['state']:<12}{size:>10}  {m['folder']}")
        previous = task
    unique = {m["id"]: m for _, m in rows}.values()
    counts = {s: sum(1 for m in unique if m["state"] == s) for s in ("installed", "incomplete", "missing")}
    total = sum(m["bytes"] for m in unique)
    lines += ["", f"{counts['installed']} installed ({_size(total)} on disk), {counts['incomplete']} incomplete, "
                  f"{counts['missing']} missing."]
    if counts["incomplete"] or counts["missing"]:
        lines.append("Missing and incomplete models are installed by the next run that needs them, or by "
                     "totalseg_download_weights -t TASK.")
    return "\n".join(lines)


def _registry_json(tasks: list[str]) -> dict:
    from totalseg.registry import get_task

    return {"totalsegmentator_version": OFFICIAL_VERSION,
            "tasks": {t: {"modality": get_task(t).modality, "license_required": get_task(t).licensed,
                          "classes": {str(k): v for k, v in sorted(get_task(t).classes.items())}} for t in tasks}}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args) -> int:
    from totalseg.registry import get_task, task_names

    tasks = list(dict.fromkeys(args.task)) if args.task else task_names()
    for t in tasks:
        get_task(t)
    if args.list_tasks:
        from totalseg.registry.listing import format_task_list

        print(json.dumps(tasks, indent=2) if args.json else format_task_list())
    elif args.classes:
        from totalseg.registry.listing import format_class_list

        names = tasks if args.task else ["total"]
        if args.json:
            print(json.dumps(_registry_json(names)["tasks"], indent=2))
        else:
            print("\n\n".join(format_class_list(t) for t in names))
    elif args.json and not args.weights:
        print(json.dumps(_registry_json(tasks), indent=2))
    else:
        report = weights_report(tasks)
        print(json.dumps(report, indent=2) if args.json else format_weights_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
