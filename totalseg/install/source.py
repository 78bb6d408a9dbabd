"""Where model weights come from and how they are fetched; read once at the entry points.

Open models: ``https://github.com/wasserth/TotalSegmentator/releases/download/<release>/<Dataset folder>.zip``.
Licensed models: ``POST https://backend.totalsegmentator.com:443/download_weights`` with the JSON
``{"license_number", "task", "version"}``, answered by the zip (or by ``{"status": "invalid_license"}``).

A mirror replaces both: with ``TOTALSEG_WEIGHTS_URL=URL`` (or ``"weights_url"`` in config.json) open models
come from ``URL/<release>/<Dataset folder>.zip`` and the licence requests go to ``URL/download_weights`` and
``URL/is_valid_license_number``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from totalseg.version import OFFICIAL_VERSION
from totalseg.errors import LicenseError, UserError
from totalseg.install.download import DEFAULT_BACKOFF, DEFAULT_RETRIES, DEFAULT_TIMEOUT
from totalseg.registry import Model, get_task, task_names

GITHUB_RELEASES = "https://github.com/wasserth/TotalSegmentator/releases/download"
LICENSE_SERVER = "https://backend.totalsegmentator.com:443"


@dataclass(frozen=True)
class Source:
    """How to fetch weights: the mirror (None: official addresses), licence, timeout, retries."""

    mirror: str | None = None
    license_number: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF

    @property
    def license_server(self) -> str:
        return self.mirror or LICENSE_SERVER


@dataclass(frozen=True)
class Request:
    """One download: the address and, for the licence server, the JSON body of a POST."""

    url: str
    json_body: dict | None = None


def _number(environ: Mapping[str, str], name: str, default: float, kind=float):
    text = environ.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not a number") from None
    if value < 0:
        raise UserError(f"{name} must not be negative (got {text})")
    return value


def source_from_environment(config: Mapping | None = None, environ: Mapping[str, str] | None = None) -> Source:
    """The :class:`Source` for this run from ``TOTALSEG_WEIGHTS_URL`` / config.json's ``weights_url``,
    the stored licence, and ``TOTALSEG_DOWNLOAD_TIMEOUT`` (s) / ``TOTALSEG_DOWNLOAD_RETRIES``."""
    if config is None:
        from totalseg.config import read_config

        config = read_config()
    environ = os.environ if environ is None else environ
    mirror = environ.get("TOTALSEG_WEIGHTS_URL") or config.get("weights_url") or None
    if mirror is not None:
        if not mirror.startswith(("http://", "https://")):
            raise UserError(f"TOTALSEG_WEIGHTS_URL / weights_url must start with http:// or https:// (got {mirror})")
        mirror = mirror.rstrip("/")
    timeout = _number(environ, "TOTALSEG_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT)
    if timeout == 0:
        raise UserError("TOTALSEG_DOWNLOAD_TIMEOUT must be more than 0 seconds")
    return Source(mirror=mirror, license_number=config.get("license_number") or None, timeout=timeout,
                  retries=int(_number(environ, "TOTALSEG_DOWNLOAD_RETRIES", DEFAULT_RETRIES, int)))


def licensed_task_of(model: Model) -> str:
    """The task name the licence server knows ``model`` by: the first task that runs it."""
    for name in task_names():
        task = get_task(name)
        if any(model.id in mode.models for mode in task.modes.values()):
            return name
    raise UserError(f"no task runs model {model.id}; it cannot be requested from the licence server")


def model_request(model: Model, source: Source) -> Request:
    """The request that fetches ``model``'s zip (a licensed model needs ``source.license_number``)."""
    if model.release:
        return Request(f"{source.mirror or GITHUB_RELEASES}/{model.release}/{model.folder}.zip")
    if not model.licensed:
        raise UserError(f"model {model.folder} has no download address; import its zip with totalseg_import_weights")
    if not source.license_number:
        from totalseg.config import ACADEMIC_LICENSE_URL

        raise LicenseError(f"model {model.folder} is licensed: set a licence first (totalseg_set_license -l KEY); "
                        f"an academic licence is free at {ACADEMIC_LICENSE_URL}")
    return Request(f"{source.license_server}/download_weights",
                   {"license_number": source.license_number, "task": licensed_task_of(model),
                    "version": OFFICIAL_VERSION})
