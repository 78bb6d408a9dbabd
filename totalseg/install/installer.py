"""Put a model into the weights home so that it is either complete or not there at all.

Each install runs under a per-model lock (``<weights>/.<Dataset folder>.lock``, fcntl), so processes that
share a home never download or extract the same model at once. The zip goes to
``<weights>/.<Dataset folder>.zip`` (``.part`` while it downloads), is checked, extracted into a temporary
folder beside the target, its checkpoints are loaded once, and only then is it renamed into place. A model
folder that lacks required files is replaced, never used. On failure the home is left as it was (a partial
download that broke off for a network reason is kept so that the next run resumes it).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

from totalseg import home
from totalseg.config import ACADEMIC_LICENSE_URL
from totalseg.errors import LicenseError, UserError, WeightsError
from totalseg.filelock import file_lock
from totalseg.install.archive import ArchiveError, check_archive, extract_archive, sniff, top_folders
from totalseg.install.download import DownloadError, HtmlError, NetworkError, NotFoundError, download_file
from totalseg.install.source import Request, Source, model_request
from totalseg.install.status import INSTALLED, MISSING, all_models, check_loadable, model_state, required_files
from totalseg.notice import notice_printer
from totalseg.registry import Model

Say = Callable[[str], None]


def _model_lock(path: Path, say: Say):
    """The per-model install lock (its file is deleted by the holder on release)."""
    return file_lock(path, lambda: say(f"Waiting for another process that is installing {path.name[1:-5]}..."),
                     remove=True)


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, outermost first."""
    created = []
    for p in reversed([folder, *folder.parents]):
        if not p.exists():
            p.mkdir()
            created.append(p)
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    for p in reversed(folders):
        try:
            p.rmdir()
        except OSError:
            break


@contextmanager
def _in_weights_folder(weights: Path, folder: str, say: Say):
    """Create the weights folder if needed, lock ``folder``, and undo the folder creation on failure."""
    try:
        created = _make_dirs(weights)
    except OSError as e:
        raise WeightsError(f"cannot create the weights folder {weights} ({e.strerror})") from None
    done = False
    try:
        try:
            with _model_lock(weights / f".{folder}.lock", say):
                # Staging folders of a process that was killed mid-install: ours to clear, we hold the lock.
                for stale in weights.glob(f".{folder}.*.tmp"):
                    shutil.rmtree(stale, ignore_errors=True)
                yield
        except OSError as e:
            raise WeightsError(f"cannot write into the weights folder {weights} ({e.strerror}: "
                               f"{e.filename or ''})") from None
        done = True
    finally:
        if not done:
            _remove_if_empty(created)


def _place(new: Path, target: Path, models: list[Model], replace: bool, trash: Path) -> None:
    """Move the extracted Dataset folder ``new`` to ``target``, keeping complete parts already there."""
    if not target.exists():
        os.rename(new, target)
        return
    subfolders = {m.subfolder for m in models}
    weights = target.parent
    for child in sorted(new.iterdir()):
        dst = target / child.name
        if not os.path.lexists(dst):
            os.rename(child, dst)
        elif child.name in subfolders:
            model = next(m for m in models if m.subfolder == child.name)
            if replace or model_state(model, weights) != INSTALLED:
                # Swap: the old folder goes to the trash (deleted with the staging folder).
                os.rename(dst, trash / f"replaced-{child.name}")
                os.rename(child, dst)


def _install_zip(zip_path: Path, models: list[Model], weights: Path, where: str, replace: bool) -> None:
    """Check, extract beside the target, load-test and rename ``zip_path`` into ``weights``."""
    folder = models[0].folder
    required = sorted({f for m in models for f in required_files(m)})
    check_archive(zip_path, folder, required, where)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=weights))
    try:
        extract_archive(zip_path, staging, where)
        for model in models:
            check_loadable(model, staging / folder)
        _place(staging / folder, weights / folder, models, replace, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _explain(error: DownloadError, model: Model, request: Request, source: Source, weights: Path) -> UserError:
    """The download error, said in terms of the model and what the user can do about it."""
    what = f"cannot download the weights of {model.folder}: {error}"
    by_hand = (f"download {request.url} on a machine with internet and run `totalseg_import_weights -i "
               f"{model.folder}.zip`" if request.json_body is None else
               "run totalseg_download_weights on a machine with internet")
    if isinstance(error, NetworkError):
        return WeightsError(f"{what}. Without internet: {by_hand}, or copy the weights folder {weights} (inside "
                            "~/.totalsegmentator or TOTALSEG_HOME_DIR) from a machine that has the weights")
    if isinstance(error, NotFoundError) and source.mirror:
        return WeightsError(f"{what}. Check TOTALSEG_WEIGHTS_URL / weights_url ({source.mirror})")
    if isinstance(error, (NotFoundError, HtmlError)):
        fetch = (f"fetch it in a browser and run `totalseg_import_weights -i {model.folder}.zip`"
                 if request.json_body is None else "try again later")
        return WeightsError(f"{what}. Or {fetch}")
    return WeightsError(what)


def _licence_answer(zip_path: Path, model: Model) -> None:
    """The licence server answers JSON instead of a zip when it refuses; say why in one line."""
    if sniff(zip_path) != "json":
        return
    try:
        status = json.loads(zip_path.read_text(errors="replace")).get("status", "")
    except (ValueError, AttributeError):
        status = ""
    if "license" in str(status):
        raise LicenseError(f"the licence server refused the licence number for {model.folder} ({status}); "
                           f"check it (totalseg_set_license -l KEY) or get one at {ACADEMIC_LICENSE_URL}")
    raise ArchiveError(f"the server answered {str(status) or 'JSON'} instead of the zip of {model.folder}")


def install_model(model: Model, source: Source, weights: Path | None = None, *, quiet: bool = False,
                  say: Say | None = None) -> Path:
    """Download, verify and install ``model``; return its result folder. Does nothing if it is complete."""
    weights = home.weights_dir() if weights is None else Path(weights)
    say = say or notice_printer(quiet)
    request = model_request(model, source)  # licence problems surface before anything is written
    with _in_weights_folder(weights, model.folder, say):
        state = model_state(model, weights)
        if state != INSTALLED:
            zip_path = weights / f".{model.folder}.zip"
            try:
                download_file(request.url, zip_path, quiet=quiet, timeout=source.timeout, retries=source.retries,
                              backoff=source.backoff, json_body=request.json_body, say=say)
            except DownloadError as e:
                raise _explain(e, model, request, source, weights) from None
            try:
                _licence_answer(zip_path, model)
                _install_zip(zip_path, [model], weights, f"the download of {model.folder}", replace=False)
            finally:
                zip_path.unlink(missing_ok=True)
            say(f"Installed {model.folder} into {weights}"
                + (" (it replaces an incomplete copy)" if state != MISSING else ""))
    return weights / model.folder / model.subfolder


def missing_models(models: Iterable[Model], weights: Path | None = None) -> list[Model]:
    """The models of ``models`` that are not completely installed (a quick look at the files)."""
    weights = home.weights_dir() if weights is None else Path(weights)
    unique = {m.id: m for m in models}.values()
    return [m for m in unique if model_state(m, weights) != INSTALLED]


def ensure_installed(models: Iterable[Model], source: Source, weights: Path | None = None, *,
                     quiet: bool = False, say: Say | None = None) -> list[Model]:
    """Install the models that are missing or incomplete; return those installed now."""
    weights = home.weights_dir() if weights is None else Path(weights)
    say = say or notice_printer(quiet)
    todo = missing_models(models, weights)
    for model in todo:
        install_model(model, source, weights, quiet=quiet, say=say)
    return todo


def import_archive(zip_path: Path, weights: Path | None = None, *, quiet: bool = False,
                   say: Say | None = None) -> list[Model]:
    """Install a weights zip from disk (no network); an installed copy of the same model is replaced."""
    zip_path = Path(zip_path)
    weights = home.weights_dir() if weights is None else Path(weights)
    say = say or notice_printer(quiet)
    if not zip_path.is_file():
        raise UserError(f"the weights file does not exist: {zip_path}")
    tops = top_folders(zip_path)
    if len(tops) != 1:
        raise ArchiveError(f"{zip_path} should hold one Dataset<ID>_<name>/ folder, but holds "
                           f"{', '.join(tops) or 'nothing'}")
    models = [m for m in all_models() if m.folder == tops[0]]
    if not models:
        raise ArchiveError(f"{zip_path} holds {tops[0]}/, which is not a model of any task")
    with _in_weights_folder(weights, tops[0], say):
        _install_zip(zip_path, models, weights, str(zip_path), replace=True)
        (weights / f".{tops[0]}.zip.part").unlink(missing_ok=True)  # a broken download is moot now
    say(f"Imported {tops[0]} into {weights}")
    return models
