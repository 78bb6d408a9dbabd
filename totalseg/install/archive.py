"""A weights zip: is it one, does it hold what the model needs, and extract it without surprises.

Official weight zips hold one top folder, ``Dataset<ID>_<name>/``, with
``<trainer>__<plans>__<configuration>/{plans.json, dataset.json, fold_<k>/checkpoint_final.pth}`` inside.
Members that would land outside that folder (absolute paths, ``..``, links) are refused, not skipped.
"""
from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from pathlib import Path

from totalseg.errors import WeightsError

IGNORED_TOP = ("__MACOSX",)  # resource forks that macOS' archiver adds


class ArchiveError(WeightsError):
    """The file is not a usable weights zip."""


def sniff(path: Path) -> str:
    """What the file's first bytes say it is: ``zip``, ``html``, ``json``, ``empty`` or ``other``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")):
        return "html"
    if start.startswith((b"{", b"[")):
        return "json"
    return "other"


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def _members(zf: zipfile.ZipFile, where: str) -> list[zipfile.ZipInfo]:
    """The members to use, after refusing any that could escape the extraction folder."""
    members = []
    for info in zf.infolist():
        name = info.filename
        parts = _parts(name)
        if not parts:
            continue
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise ArchiveError(f"{where} has a member outside its folder ({name!r}); refusing to extract it")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ArchiveError(f"{where} has a symbolic link ({name!r}); refusing to extract it")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{where} is encrypted ({name!r}); weight zips are not")
        if parts[0] in IGNORED_TOP:
            continue
        members.append(info)
    return members


def _open(path: Path, where: str) -> zipfile.ZipFile:
    kind = sniff(path)
    if kind == "html":
        raise ArchiveError(f"{where} is a web page (HTML), not a zip; a proxy or login page may have answered")
    if kind != "zip":
        raise ArchiveError(f"{where} is not a zip file ({kind} content)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ArchiveError(f"{where} is a corrupt or truncated zip ({e}); download it again") from None


def top_folders(path: Path, where: str | None = None) -> list[str]:
    """The top-level folders of the zip (ignoring macOS' ``__MACOSX``), after the safety checks."""
    where = where or str(path)
    with _open(path, where) as zf:
        return sorted({_parts(info.filename)[0] for info in _members(zf, where)})


def check_archive(path: Path, folder: str, required: list[str], where: str | None = None) -> None:
    """Refuse ``path`` unless it is a safe zip with only ``folder/`` on top and every ``folder/<required>``.

    ``required`` are paths relative to ``folder`` (e.g. ``<subfolder>/fold_0/checkpoint_final.pth``).
    """
    where = where or str(path)
    with _open(path, where) as zf:
        members = _members(zf, where)
        tops = sorted({_parts(info.filename)[0] for info in members})
        if tops != [folder]:
            found = ", ".join(tops) or "nothing"
            raise ArchiveError(f"{where} should hold the folder {folder}/ only, but holds {found}")
        files = {"/".join(_parts(info.filename)) for info in members if not info.is_dir()}
        missing = [r for r in required if f"{folder}/{r}" not in files]
        if missing:
            raise ArchiveError(f"{where} is incomplete: {folder}/{missing[0]} is missing"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def extract_archive(path: Path, dest: Path, where: str | None = None) -> None:
    """Extract the zip's members into the existing folder ``dest``; checksums are verified on the way."""
    where = where or str(path)
    with _open(path, where) as zf:
        members = _members(zf, where)
        need = sum(info.file_size for info in members)
        free = shutil.disk_usage(dest).free
        if need > free:
            raise ArchiveError(f"{where} needs {need / 1e9:.1f} GB but {dest} has {free / 1e9:.1f} GB free")
        root = dest.resolve()
        for info in members:
            target = root.joinpath(*_parts(info.filename))
            if root not in target.parents:
                raise ArchiveError(f"{where} has a member outside its folder ({info.filename!r})")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except (zipfile.BadZipFile, EOFError, zlib.error) as e:
                raise ArchiveError(f"{where} is corrupt ({info.filename}: {e}); download it again") from None

