"""Find the DICOM files of an input: a folder (searched recursively), a .zip archive or one file.

Each file is read twice at most: its header (``stop_before_pixels``) to group the files into series, and in full
only if its series is the one that is loaded.  Zip members are read from the archive; nothing is extracted to
disk.  Files that are plainly not DICOM (no ``DICM`` marker, no DICOM file name, no DICOM-looking start) are
ignored and counted; a file that claims to be DICOM but cannot be parsed is an error naming it.
"""
from __future__ import annotations

import io
import os
import warnings
import zipfile
from dataclasses import dataclass, field

from totalseg.errors import InputError

__all__ = ["FileRef", "Scan", "is_dicom_input", "open_archive", "scan_files", "read_full"]

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima", ".dc3")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Files that may sit beside DICOM series and are never images (ignored without reading).
_SKIP_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class FileRef:
    """One file: a path on disk, or a member of a zip archive."""

    path: str
    member: str | None = None

    @property
    def name(self) -> str:
        return self.path if self.member is None else f"{self.path}:{self.member}"

    def read(self, archive: zipfile.ZipFile | None = None) -> bytes:
        """The file's bytes; ``archive`` is the open zip file, to avoid re-opening it for every member."""
        if self.member is None:
            with open(self.path, "rb") as f:
                return f.read()
        if archive is not None:
            return archive.read(self.member)
        with zipfile.ZipFile(self.path) as z:
            return z.read(self.member)


@dataclass
class Scan:
    """Headers of the DICOM files found, and what else was seen (for messages)."""

    headers: list[tuple[FileRef, object]] = field(default_factory=list)  # (file, pydicom Dataset)
    n_files: int = 0
    n_not_dicom: int = 0


def is_dicom_input(path) -> bool:
    """True for a folder, a zip archive or a file that is not NIfTI (the DICOM loader's inputs)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        return True
    low = p.lower()
    if low.endswith(_NIFTI_SUFFIXES):
        return False
    return os.path.isfile(p)


def _looks_like_dicom(head: bytes, name: str) -> bool:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if name.lower().endswith(_DICOM_SUFFIXES):
        return True
    # Files without preamble (old ACR-NEMA style) start with a group 0x0002 or 0x0008 tag, little endian.
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[2:4] < b"\x20\x00"


def _read_header(data: bytes, ref: FileRef):
    """Parsed header of a DICOM file, or None if the bytes are not DICOM at all."""
    from pydicom.errors import InvalidDicomError

    if not _looks_like_dicom(data[:132], ref.member or ref.path):
        return None
    has_marker = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        ds = _parse(data, ref, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or "") or str((meta or {}).get("MediaStorageSOPClassUID", "") or "")
    if sop_class or "Modality" in ds:
        return ds
    if has_marker:
        raise InputError(f"DICOM file {ref.name} is corrupt (no SOP class or modality could be read); "
                         "remove it or export the series again")
    if (ref.member or ref.path).lower().endswith(_DICOM_SUFFIXES):
        raise InputError(f"file {ref.name} is named like a DICOM file but is not readable as DICOM; "
                         "remove it or export the series again")
    return None


# pydicom reports damaged files through warnings and keeps going; these mean the file is truncated or garbled.
_DAMAGE_WORDS = ("end of file", "delimiter", "truncat", "unexpected end")


def _parse(data: bytes, ref: FileRef, stop_before_pixels: bool):
    """pydicom.dcmread of ``data``; parser errors and damage warnings become a one-line InputError."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    has_marker = len(data) >= 132 and data[128:132] == b"DICM"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, force=not has_marker)
        except InvalidDicomError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parser failure means the file is damaged
            raise InputError(f"DICOM file {ref.name} is corrupt or truncated ({_short(exc)}); "
                             "remove it or export the series again") from exc
    for w in caught:
        text = str(w.message)
        if any(word in text.lower() for word in _DAMAGE_WORDS):
            raise InputError(f"DICOM file {ref.name} is corrupt or truncated ({_short(Exception(text))}); "
                             "remove it or export the series again")
    return ds


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:120] + "...") if len(text) > 120 else (text or type(exc).__name__)


def _walk(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        out.extend(os.path.join(root, f) for f in sorted(files))
    return out


def scan_files(source) -> Scan:
    """Read the headers of every DICOM file of ``source`` (folder, zip or single file)."""
    path = os.fspath(source)
    scan = Scan()
    if not os.path.exists(path):
        raise InputError(f"the input file or folder does not exist: {path}")
    archive = None
    try:
        if os.path.isdir(path):
            refs = [FileRef(p) for p in _walk(path)]
        elif zipfile.is_zipfile(path):
            archive = _open_zip(path)
            refs = [FileRef(path, n) for n in sorted(archive.namelist())
                    if not n.endswith("/") and not n.startswith("__MACOSX/")]
        else:
            refs = [FileRef(path)]
        for ref in refs:
            base = os.path.basename(ref.member or ref.path).lower()
            if base in _SKIP_NAMES or base.startswith("._"):
                continue
            scan.n_files += 1
            ds = _read_header(_read_bytes(ref, archive), ref)
            if ds is None:
                scan.n_not_dicom += 1
            else:
                scan.headers.append((ref, ds))
    finally:
        if archive is not None:
            archive.close()
    return scan


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise InputError(f"cannot read zip archive {path}: {_short(exc)}; check the file") from exc


def _read_bytes(ref: FileRef, archive: zipfile.ZipFile | None) -> bytes:
    try:
        return ref.read(archive)
    except OSError as exc:
        raise InputError(f"cannot read {ref.name}: {exc.strerror or exc}") from exc
    except (zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as exc:  # damaged member, CRC error
        raise InputError(f"cannot read {ref.name} from the zip archive ({_short(exc)}); check the file") from exc


def open_archive(refs: list[FileRef]) -> zipfile.ZipFile | None:
    """The zip archive ``refs`` come from (open), or None for files on disk."""
    members = [r for r in refs if r.member is not None]
    return _open_zip(members[0].path) if members else None


def read_full(ref: FileRef, archive: zipfile.ZipFile | None = None):
    """The whole dataset (pixel data included) of ``ref``; errors name the file."""
    from pydicom.errors import InvalidDicomError

    try:
        return _parse(_read_bytes(ref, archive), ref, stop_before_pixels=False)
    except InvalidDicomError as exc:
        raise InputError(f"DICOM file {ref.name} is corrupt or truncated ({_short(exc)}); "
                         "remove it or export the series again") from exc
