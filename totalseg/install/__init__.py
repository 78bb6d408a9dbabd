"""Getting model weights into the home safely: download, verify, import, install.

Modules, in the order data flows through them:

``source``     where a model comes from (GitHub release, licence server, or a mirror), read once at entry points
``download``   one HTTP file to disk: atomic, resumable (Range), retried, never an HTML page
``archive``    a weights zip: is it one, does it hold the expected files, safe extraction
``status``     is a model in the home installed, missing or incomplete; sizes on disk
``installer``  download or import, verify, extract beside the target, rename into place under a lock

Nothing here sends anything but the requests for the files themselves.
"""
from __future__ import annotations

from totalseg.install.download import download_file
from totalseg.install.installer import ensure_installed, import_archive, install_model, missing_models
from totalseg.install.source import Source, source_from_environment

__all__ = ["Source", "download_file", "ensure_installed", "import_archive", "install_model",
           "missing_models", "source_from_environment"]
