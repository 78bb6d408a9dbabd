"""Where the weights live: the official home layout, so existing downloads are used unchanged.

The environment is read here and only here; the rest of the code receives paths.
"""
from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """``$TOTALSEG_HOME_DIR`` or ``~/.totalsegmentator`` (``/tmp/.totalsegmentator`` for a home of '/')."""
    env = os.environ.get("TOTALSEG_HOME_DIR")
    if env:
        return Path(env)
    home = Path.home()
    if str(home) == "/":
        return Path("/tmp/.totalsegmentator")
    return home / ".totalsegmentator"


def weights_dir() -> Path:
    """``$TOTALSEG_WEIGHTS_PATH`` or ``<home>/nnunet/results``: the folder holding ``Dataset<ID>_*``."""
    env = os.environ.get("TOTALSEG_WEIGHTS_PATH")
    if env:
        return Path(env)
    return home_dir() / "nnunet" / "results"


def config_path() -> Path:
    return home_dir() / "config.json"


def custom_tasks_path() -> Path:
    """``<home>/custom_tasks.json``: tasks a user registered (trained or fine-tuned models)."""
    return home_dir() / "custom_tasks.json"
