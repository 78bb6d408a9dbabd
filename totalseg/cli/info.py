"""``totalseg_info``: the tasks and their classes, as the official command prints them, and which weights
are installed.

The official modes and outputs: no option prints the task table (``--json``: the whole registry), ``-lt`` the
task table (``--json``: one summary per task), ``-cl -ta TASK`` the task's classes (``--json``: index -> name).
Ours: ``-w`` lists, per task, the models ``totalseg_download_weights -t TASK`` fetches, their state in the
weights folder and their size on disk; ``-ta`` may be repeated (JSON then keyed by task).
"""
from __future__ import annotations

import argparse
import json
import sys

from totalseg.version import OFFICIAL_VERSION
from totalseg.cli.common import run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="totalseg_info",
                                description="The segmentation tasks, their classes, and the installed weights.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-lt", "--list-tasks", action="store_true",
                      help="the tasks with modality, licence and number of classes")
    mode.add_argument("-cl", "--classes", action="store_true", help="the classes (index -> name) of -ta TASK")
    mode.add_argument("-w", "--weights", action="store_true",
                      help="installed / missing / incomplete models per task, with sizes")
    p.add_argument("-ta", "--task", action="append", metavar="TASK",
                   help="the task for -cl; only these tasks otherwise (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.classes and not args.task:
        parser.error("-cl/--classes needs a task: -ta TASK (e.g. totalseg_info -cl -ta total)")
    return run(lambda: _run(args))


def _run(args) -> int:
    from totalseg.registry import get_task, task_names
    from totalseg.registry.listing import format_class_list, format_task_list, task_entry, task_summary

    tasks = list(dict.fromkeys(args.task)) if args.task else task_names()
    for t in tasks:
        get_task(t)  # an unknown task: one line
    if args.classes:
        if args.json:
            classes = {t: task_entry(t)["classes"] for t in tasks}
            print(json.dumps(classes[tasks[0]] if len(tasks) == 1 else classes, indent=2))
        else:
            print("\n\n".join(format_class_list(t) for t in tasks))
    elif args.weights:
        report = weights_report(tasks)
        print(json.dumps(report, indent=2) if args.json else format_weights_report(report))
    elif args.json:
        summary = [task_summary(t) for t in tasks] if args.list_tasks else \
            {"totalsegmentator_version": OFFICIAL_VERSION, "tasks": {t: task_entry(t) for t in tasks}}
        print(json.dumps(summary, indent=2))
    else:
        print(format_task_list())
        if not args.list_tasks:
            print("\nClasses of a task: totalseg_info -cl -ta TASK; JSON: --json; installed weights: -w.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
