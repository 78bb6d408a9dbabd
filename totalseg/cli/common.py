"""What every command line shares: one-line errors with exit status 1, and progress on stderr."""
from __future__ import annotations

import sys
from typing import Callable

from totalseg.errors import OUT_OF_MEMORY, UserError
from totalseg.notice import notice_printer


def run(body: Callable[[], int], interrupted: str = "interrupted; nothing was written") -> int:
    """Run a command; a user's mistake ends as ``ERROR: <one line>`` and status 1, never a traceback."""
    try:
        return body()
    except UserError as e:
        print(f"ERROR: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"ERROR: {interrupted}", file=sys.stderr)
    except MemoryError:
        print(f"ERROR: {OUT_OF_MEMORY}", file=sys.stderr)
    except BrokenPipeError:  # the reader went away (`... --list-tasks | head`): stop quietly
        _silence_stdout()
    return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def check_paths(input, output, output_kind: str, input_hint: str = "") -> None:
    """The checks every command makes before any work: the input exists, the output is not a folder
    (``output_kind`` says what to give instead, e.g. "a .json file name")."""
    if input is not None and not input.exists():
        raise UserError(f"the input file does not exist: {input}{input_hint}")
    if output is not None and output.is_dir():
        raise UserError(f"the output {output} is a folder; give {output_kind}")


def progress(quiet: bool) -> Callable[[str], None]:
    """A message printer for stderr (silent with ``quiet``)."""
    return notice_printer(quiet)


def write_result(result: dict, output, quiet: bool) -> None:
    """A command's JSON result: written atomically to ``output`` and echoed unless ``quiet``."""
    import json

    from totalseg.write.statistics import write_statistics

    output.parent.mkdir(parents=True, exist_ok=True)
    write_statistics(result, output)
    if not quiet:
        print(json.dumps(result, indent=4))
