"""``totalsegmentator.config`` of the official API: the weights home and its config.json, served by
:mod:`totalseg.home` and :mod:`totalseg.config`.

Nothing is sent anywhere: a licence number is checked by its form (offline, as every licensed run checks it),
and there are no usage statistics to send.
"""
from __future__ import annotations

import secrets
import string
from pathlib import Path

__all__ = ["get_config", "get_config_key", "get_license_number", "get_totalseg_dir", "get_version",
           "get_weights_dir", "has_valid_license_offline", "set_config_key", "set_license_number",
           "setup_totalseg"]


def get_totalseg_dir() -> Path:
    """``$TOTALSEG_HOME_DIR`` or ``~/.totalsegmentator``."""
    from totalseg.home import home_dir

    return home_dir()


def get_weights_dir() -> Path:
    """``$TOTALSEG_WEIGHTS_PATH`` or ``<home>/nnunet/results``."""
    from totalseg.home import weights_dir

    return weights_dir()


def get_config() -> dict | None:
    """config.json of the home, or None when there is none yet."""
    from totalseg.config import read_config
    from totalseg.home import config_path

    return read_config() if config_path().exists() else None


def get_config_key(key_name: str):
    """One value of config.json (None when it or the file is missing)."""
    return (get_config() or {}).get(key_name)


def set_config_key(key_name: str, value) -> dict | None:
    """Store one value in config.json and return the config; None (with a warning) when there is no file."""
    from totalseg.config import update_config

    if get_config() is None:
        print("WARNING: config.json does not exist yet; run TotalSegmentator or totalseg_setup_manually first")
        return None
    return update_config({key_name: value})


def setup_totalseg(totalseg_id: str | None = None) -> dict:
    """config.json as it is, or made with ``totalseg_id`` (a new random id when None)."""
    from totalseg.cli.setup_manually import ID_PREFIX, setup_config

    config = get_config()
    if config is not None:
        return config
    alphabet = string.ascii_uppercase + string.digits
    new_id = totalseg_id or ID_PREFIX + "".join(secrets.choice(alphabet) for _ in range(8))
    return setup_config(new_id)[0]


def get_license_number() -> str:
    """The stored licence number ("" when none)."""
    return get_config_key("license_number") or ""


def set_license_number(license_number: str, skip_validation: bool = False) -> None:
    """Store a licence number (checked by its form unless ``skip_validation``; there is no online check)."""
    from totalseg.config import check_license_format, update_config

    if not skip_validation:
        check_license_format(license_number)
    update_config({"license_number": license_number})


def has_valid_license_offline() -> tuple[str, str]:
    """``(state, message)``: "yes", "missing_license", "missing_config_file" or "invalid_license"."""
    from totalseg.home import config_path

    config = get_config()
    if config is None:
        return "missing_config_file", f"ERROR: no config.json in the weights home ({config_path()})"
    number = config.get("license_number")
    if number is None:
        return "missing_license", "ERROR: no licence number stored; set one with totalseg_set_license -l <key>"
    if len(number) != 18:
        return "invalid_license", f"ERROR: the stored licence number {number!r} does not have 18 characters"
    return "yes", "SUCCESS: a licence number of the right form is stored."


def get_version() -> str:
    """The official version whose behaviour this package reproduces."""
    from totalseg.version import OFFICIAL_VERSION

    return OFFICIAL_VERSION
