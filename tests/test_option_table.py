"""The option table is the one home of every option: the command line, the API, the cohort runner and the
README's table come from it, an option is named in few package files, and the package has no import circle."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from totalseg.errors import UserError
from totalseg.run import options as option_table
from totalseg.run.options import OPTIONS, Option

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "totalseg"

NEW = Option("smoothing_passes", ("-smp", "--smoothing_passes"), 0, "a test option", "write", "the label outputs",
             cli={"type": int})


@pytest.fixture
def with_new_option(monkeypatch):
    monkeypatch.setattr(option_table, "OPTIONS", (*OPTIONS, NEW))


def test_a_new_entry_reaches_the_command_line(with_new_option, monkeypatch, tmp_path):
    from totalseg.cli import totalsegmentator as cli

    args = cli.parser().parse_args(["-i", "ct.nii.gz", "-o", "out", "-smp", "3"])
    assert option_table.from_command_line(args)["smoothing_passes"] == 3
    seen = {}
    monkeypatch.setattr("totalseg.run.api.totalsegmentator", lambda i, o, **kw: seen.update(kw))
    image = tmp_path / "ct.nii.gz"
    image.write_bytes(b"")
    assert cli.main(["-i", str(image), "-o", str(tmp_path / "out"), "--smoothing_passes", "2"]) == 0
    assert seen["smoothing_passes"] == 2


def test_a_new_entry_reaches_the_api(with_new_option, monkeypatch):
    import totalseg.run.api as api

    seen = {}
    monkeypatch.setattr(api, "run", lambda input, output, values, *a, **k: seen.update(values))
    api.totalsegmentator("ct.nii.gz", "out", smoothing_passes=4)
    assert seen["smoothing_passes"] == 4 and seen["fast"] is False
    option_table.collect({"smoothing_passes": 1})
    with pytest.raises(UserError, match="unknown option 'smoothing_pass'"):
        option_table.collect({"smoothing_pass": 1})


def test_a_new_entry_reaches_the_cohort_runner(with_new_option):
    from totalseg.cli.batch import _case_options, _parser, _refuse_unhandled

    parser = _parser()
    args = parser.parse_args(["-i", "scans", "-o", "out", "-smp", "5"])
    _refuse_unhandled(parser, args)  # passed on, so not refused
    assert _case_options(args)["smoothing_passes"] == 5


def test_single_run_options_are_refused_by_the_cohort_runner():
    from totalseg.cli.batch import _parser, _refuse_unhandled

    parser = _parser()
    for flag in (["-rp", "r.json"], ["--series_uid", "1.2.3"], ["--debug"]):
        with pytest.raises(UserError, match="option of single runs"):
            _refuse_unhandled(parser, parser.parse_args(["-i", "scans", "-o", "out", *flag]))


def test_the_official_signature_mirrors_the_table():
    """totalsegmentator() keeps the official signature; each of its options is an entry with the same default."""
    from totalseg.run.api import totalsegmentator

    params = inspect.signature(totalsegmentator).parameters
    names = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD and n not in ("input", "output",
                                                                                                 "predictor")]
    table = option_table.table()
    assert names == list(table)
    for name in names:
        assert params[name].default == table[name].default, name


def test_refused_and_malformed_options_are_one_line_errors():
    for options, fragment in (({"test": 1}, "--test is internal to the official test suite"),
                              ({"resampling_order": 7}, "--resampling_order must be 0..5"),
                              ({"task": "no_such_task"}, "unknown task"),
                              ({"fast": True, "save_lowres": True, "output_type": "dicomm"}, "unknown output type"),
                              ({"save_lowres": True}, "save_lowres only works together with fast")):
        with pytest.raises(UserError, match=re.escape(fragment)):
            option_table.collect(options)


def test_readme_option_table_is_the_tables():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert option_table.markdown_table() in readme


# Modules that call the API or the command line as a client would (they pass options, they do not plumb them),
# and parameters that are concepts of their own layer (a DICOM series' UID, the licence of the weights home).
CLIENTS = ("totalseg/serve/", "totalseg/mcp_server/", "totalseg/clinical/", "totalseg/classify/",
           "totalseg/cli/crop_to_body.py", "totalseg/cli/spine_report.py", "totalseg/cli/aorta_report.py",
           "totalseg/cli/pulmonary_report.py", "totalseg/cli/get_body_stats.py", "totalseg/cli/evans_index.py",
           "totalseg/cli/serve.py")
OWN_CONCEPTS = {"license_number", "series_uid"}


def test_every_option_is_named_in_at_most_three_package_files():
    """The table, where the option takes effect, and the official-signature wrapper (names with an underscore:
    the short ones, e.g. fast, task, device, are ordinary words elsewhere)."""
    files = {p: p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")
             if not str(p.relative_to(ROOT)).startswith(CLIENTS)}
    crowded = {}
    for o in OPTIONS:
        if "_" not in o.name or o.name in OWN_CONCEPTS:
            continue
        hits = [str(p.relative_to(ROOT)) for p, text in files.items() if re.search(rf"\b{o.name}\b", text)]
        if len(hits) > 3:
            crowded[o.name] = hits
    assert crowded == {}


def _imports(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``module`` imports, at the top or inside functions."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base in modules:
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return found - {module}


def test_the_package_has_no_import_circle():
    paths = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {m: _imports(m, p, set(paths)) for m, p in paths.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return False

    circles = sorted(f"{m} -> {n}" for m, deps in graph.items() for n in deps if reaches(n, m))
    assert circles == []
