"""Fetch one file over HTTP(S): atomic, resumable, retried, and never an HTML page saved as data.

The body goes to ``<dest>.part`` and is renamed to ``dest`` only once complete. An interrupted transfer is
resumed with an HTTP ``Range`` request, in later attempts of the same call and in a later run (the ``.part``
file of a transfer that broke off for a network reason is kept). Proxies come from the standard
environment variables (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``), which requests honours.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from totalseg.errors import UserError
from totalseg.notice import notice_printer

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 60.0  # seconds without a byte before an attempt is given up
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 1.0  # seconds before the first retry; doubles each time


class DownloadError(UserError):
    """A file could not be fetched; the message says why, in one line."""


class NotFoundError(DownloadError):
    """The server has no such file (HTTP 404/410)."""


class HtmlError(DownloadError):
    """The server sent a web page (a proxy, login or error page) instead of the file."""


class NetworkError(DownloadError):
    """No connection to the server, or it stopped answering (timeouts)."""


class _Retry(Exception):
    """A transient failure: try again, resuming where the file stands."""


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


class _Progress:
    """A light progress line on stderr: redrawn in place on a terminal, a line per quarter otherwise."""

    def __init__(self, name: str, total: int | None, done: int, quiet: bool):
        self.name, self.total, self.done, self.quiet = name, total, done, quiet
        self.tty = sys.stderr.isatty()
        self.start, self.start_done = time.monotonic(), done
        self.last_draw, self.last_quarter = 0.0, -1

    def update(self, n: int) -> None:
        self.done += n
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty and now - self.last_draw >= 0.2:
            self.last_draw = now
            print(f"\r{self._line(now)}", end="", file=sys.stderr, flush=True)
        elif not self.tty and self.total:
            quarter = 4 * self.done // self.total
            if quarter > self.last_quarter and quarter < 4:
                self.last_quarter = quarter
                print(self._line(now), file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.quiet:
            print(("\r" if self.tty else "") + self._line(time.monotonic()), file=sys.stderr, flush=True)

    def _line(self, now: float) -> str:
        mb = self.done / 1e6
        rate = (self.done - self.start_done) / 1e6 / max(now - self.start, 1e-3)
        if self.total:
            percent = 100 * self.done // self.total
            return f"  {self.name}: {percent:3d}% {mb:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s"
        return f"  {self.name}: {mb:.1f} MB {rate:.1f} MB/s"


def _attempt(session, method: str, url: str, part: Path, *, json_body, headers: dict, timeout: tuple,
             quiet: bool, say) -> None:
    """One request; resumes ``part`` if it holds bytes. Raises _Retry for transient failures."""
    offset = part.stat().st_size if part.exists() else 0
    # A POST (licence server) answers with a fresh body: resuming it is not defined.
    use_range = offset > 0 and method == "GET"
    if offset and not use_range:
        part.unlink()
        offset = 0
    with _request(session, method, url, json_body, headers, timeout, offset if use_range else None) as response:
        offset = _resume_offset(response, url, part, offset, use_range)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        say(f"Downloading {url}" if offset == 0 else f"Resuming {url} at {offset / 1e6:.1f} MB")
        _receive(response, url, part, offset, total, quiet)


def _request(session, method: str, url: str, json_body, headers: dict, timeout: tuple, offset: int | None):
    """The server's streamed answer (from byte ``offset`` on, if given)."""
    import requests

    # Byte ranges must count the file's own bytes, not those of an on-the-fly gzip of it.
    request_headers = {"Accept-Encoding": "identity", **headers}
    if offset is not None:
        request_headers["Range"] = f"bytes={offset}-"
    try:
        return session.request(method, url, json=json_body, headers=request_headers, stream=True,
                               timeout=timeout, allow_redirects=True)
    except requests.exceptions.Timeout as e:
        raise _Retry(f"no answer within {timeout[1]:g} s") from e
    except requests.exceptions.ConnectionError as e:
        raise NetworkError(f"no connection to {url} ({error_reason(e)})") from None
    except requests.exceptions.RequestException as e:
        raise DownloadError(f"cannot fetch {url} ({error_reason(e)})") from None


def _resume_offset(response, url: str, part: Path, offset: int, use_range: bool) -> int:
    """Where the answer's body goes in ``part``: ``offset`` if the server resumed there, 0 if it sends the
    whole file; errors for answers that carry no file."""
    status = response.status_code
    if status == 416 and use_range:
        part.unlink()  # our partial file does not fit the server's: start again
        raise _Retry("the server refused to resume; starting again")
    if status in (404, 410):
        raise NotFoundError(f"{url} was not found on the server (HTTP {status})")
    if status in (408, 425, 429) or status >= 500:
        raise _Retry(f"the server answered HTTP {status}")
    if status >= 400:
        raise DownloadError(f"the server refused {url} (HTTP {status} {response.reason})")
    if status not in (200, 206):
        raise DownloadError(f"unexpected answer HTTP {status} from {url}")
    if "text/html" in response.headers.get("Content-Type", "").lower():
        raise HtmlError(f"the server sent a web page instead of the file {url}; "
                        "a proxy or login page may be in the way")
    if status != 206:
        return 0  # the server ignored Range (or we sent none): the whole body follows
    content_range = response.headers.get("Content-Range", "")
    if not content_range.startswith(f"bytes {offset}-"):
        part.unlink(missing_ok=True)
        raise _Retry(f"the server resumed at the wrong place ({content_range!r}); starting again")
    return offset


def _receive(response, url: str, part: Path, offset: int, total: int | None, quiet: bool) -> None:
    """Write the body into ``part`` from ``offset`` on (0: a new file), synced to disk; checks its size."""
    import requests
    import urllib3

    progress = _Progress(Path(url.split("?")[0]).name or "download", total, offset, quiet)
    try:
        with open(part, "ab" if offset else "wb") as out:
            first = offset == 0
            for chunk in _chunks(response):
                if first and chunk:
                    first = False
                    if _looks_like_html(chunk):
                        out.close()
                        part.unlink(missing_ok=True)
                        raise HtmlError(f"the server sent a web page instead of the file {url}; "
                                        "a proxy or login page may be in the way")
                out.write(chunk)
                progress.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        raise _Retry(f"the transfer broke off ({error_reason(e)})") from e
    finally:
        progress.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Retry(f"the transfer broke off at {size} of {total} bytes")
    if size == 0:
        part.unlink()
        raise DownloadError(f"the server sent an empty file for {url}")


def _chunks(response):
    """The body as it arrives: whatever the socket has, so that a broken transfer loses no received byte."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 < 2
        yield from response.iter_content(CHUNK)
        return
    while True:
        data = read1(CHUNK)
        if not data:
            return
        yield data


def error_reason(e: BaseException) -> str:
    """The telling words of a (nested) requests/urllib3 exception, on one short line."""
    text = " ".join(str(e).split())
    for marker in ("[Errno", "Name or service not known", "Connection refused", "Read timed out",
                   "timed out", "Connection reset", "IncompleteRead"):
        i = text.find(marker)
        if i >= 0:
            text = text[i:].split("'")[0].split('"')[0].rstrip("), ")
            break
    return text[:160] or type(e).__name__


def download_file(url: str, dest: Path, *, quiet: bool = False, timeout: float = DEFAULT_TIMEOUT,
                  retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF, json_body: dict | None = None,
                  headers: dict | None = None, say=None) -> None:
    """Fetch ``url`` into ``dest`` atomically; resume where a previous attempt stopped.

    ``json_body`` makes it a POST with that JSON (the licence server's protocol). ``timeout`` bounds the wait
    for the connection and for each piece of the body; transient failures (timeouts, broken transfers,
    HTTP 5xx/429) are retried ``retries`` times, waiting ``backoff`` s, then twice that, and so on.
    Raises :class:`NotFoundError`, :class:`HtmlError`, :class:`NetworkError` or :class:`DownloadError`
    (all :class:`totalseg.errors.UserError`) with a one-line message. ``dest`` then does not exist; its
    ``.part`` file is kept only when a transfer broke off after some bytes, so that a later call resumes it.
    """
    import requests

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    if say is None:
        say = notice_printer(quiet)
    method = "POST" if json_body is not None else "GET"
    connect_timeout = min(timeout, 15.0)
    last = ""
    with requests.Session() as session:
        session.headers["User-Agent"] = "totalseg"
        for attempt in range(retries + 1):
            if attempt:
                wait = backoff * 2 ** (attempt - 1)
                say(f"Retrying in {wait:g} s ({last})")
                time.sleep(wait)
            try:
                _attempt(session, method, url, part, json_body=json_body, headers=headers or {},
                         timeout=(connect_timeout, timeout), quiet=quiet, say=say)
            except _Retry as e:
                last = str(e)
                continue
            except NetworkError as e:
                if part.exists() and part.stat().st_size > 0:  # the server went away mid-way: keep for later
                    raise NetworkError(f"{e}; run again to resume the download") from None
                part.unlink(missing_ok=True)
                raise
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            os.replace(part, dest)
            return
    kept = part.exists() and part.stat().st_size > 0
    if not kept:
        part.unlink(missing_ok=True)
    raise NetworkError(f"download of {url} failed after {retries + 1} attempts ({last})"
                       + ("; run again to resume it" if kept else ""))
