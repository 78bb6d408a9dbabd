"""config.json of the weights home: read and written atomically under a lock; licence checks.

Nothing here sends anything anywhere: there are no usage statistics.
"""
from __future__ import annotations

import json
from pathlib import Path

from totalseg import home
from totalseg.errors import LicenseError, UserError
from totalseg.filelock import file_lock
from totalseg.write.atomic import write_atomic

ACADEMIC_LICENSE_URL = "https://backend.totalsegmentator.com/license-academic/"


def read_config(path: Path | None = None) -> dict:
    path = home.config_path() if path is None else path
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is corrupt; delete it (it is recreated) or fix its JSON") from None


def update_config(changes: dict, path: Path | None = None) -> dict:
    """Merge ``changes`` into config.json; concurrent writers never corrupt it."""
    path = home.config_path() if path is None else path
    with file_lock(path.with_name(path.name + ".lock")):
        config = read_config(path)
        config.update(changes)
        text = json.dumps(config, indent=4)
        write_atomic(path, lambda tmp: tmp.write_text(text))
    return config


def check_license_format(key: str) -> None:
    if not key.startswith("aca_") or len(key) != 18:
        raise LicenseError(f"licence number '{key}' is not valid: it starts with 'aca_' and has 18 characters; "
                           f"get an academic licence at {ACADEMIC_LICENSE_URL}")


def require_license(task: str) -> None:
    """Licensed tasks need a licence number of the right form in config.json (checked offline)."""
    key = read_config().get("license_number")
    if not key or len(key) != 18:
        raise LicenseError(f"task {task} needs a licence: store it with `totalseg_set_license -l <key>` (or give "
                           f"it to TotalSegmentator with -l); an academic licence is free at {ACADEMIC_LICENSE_URL}")
