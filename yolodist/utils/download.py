"""Fetch named-but-missing files (release weights, dataset archives) atomically, or say how to by hand.

``download`` streams an http(s) or file URL into a temp file beside the destination and renames it
into place only when every byte announced by ``Content-Length`` has arrived, so a dropped connection
never leaves a file that looks complete. Any failure is a ``DownloadFailed`` whose message is the
offline recipe: what to fetch, from where, and where to put it.

Archives are unpacked by ``utils.archive``.

Release weights: ``release_url("yolov5s.pt")`` gives the upstream YOLOv5 v7.0 asset URL. The base
URL can be replaced with the ``YOLODIST_RELEASE_URL`` environment variable (a mirror, or a local
server for offline sites and tests).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from yolodist.errors import UserError
from yolodist.utils.console import bars_wanted
from yolodist.utils.io import atomic_open

LOGGER = logging.getLogger(__name__)

RELEASE_URL = "https://github.com/ultralytics/yolov5/releases/download/v7.0"
RELEASE_URL_ENV = "YOLODIST_RELEASE_URL"
# Detection weights only: upstream's -cls and -seg assets hold models this package cannot train.
RELEASE_ASSETS = frozenset(f"yolov5{size}{p6}.pt" for size in "nsmlx" for p6 in ("", "6"))
URL_SCHEMES = ("http", "https", "file")
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20


class DownloadFailed(UserError):
    """A file could not be fetched; the message says where to get it and where to put it by hand."""


def release_url(name: str, base: str | None = None) -> str | None:
    """The download URL of the upstream release asset ``name`` (``yolov5s.pt`` ...), or None if unknown.

    ``base`` defaults to ``$YOLODIST_RELEASE_URL``, else upstream's v7.0 release.
    """
    if name not in RELEASE_ASSETS:
        return None
    base = base or os.environ.get(RELEASE_URL_ENV) or RELEASE_URL
    return f"{base.rstrip('/')}/{name}"


def url_basename(url: str) -> str:
    """The file name a URL points at (query and fragment dropped, %-escapes decoded)."""
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name


def is_url(text: str) -> bool:
    """True for a single ``scheme://...`` token (whatever the scheme; ``download`` checks that)."""
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", text.strip()) is not None


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (GitHub release assets redirect to a CDN) but only to http(s)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"redirect to a non-http(s) URL {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def describe_error(error: BaseException) -> str:
    """A short reason for a failed fetch or file operation, for one-line messages."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        return str(reason.strerror or reason) if isinstance(reason, OSError) else str(reason)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def download(
    url: str, dest: str | Path, *, desc: str | None = None, timeout: float = DEFAULT_TIMEOUT, progress: bool = True
) -> Path:
    """Fetch ``url`` (http, https or file) to ``dest`` atomically, with a progress bar; returns ``dest``.

    Raises ``DownloadFailed`` (nothing left at ``dest`` or in its temp file) when the server is
    unreachable, answers with an error, or sends fewer or more bytes than its ``Content-Length``.
    """
    dest = Path(dest)
    offline = f"; download it yourself and put it at {dest.absolute()}"
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise DownloadFailed(f"cannot download {url}: only http, https and file URLs are supported{offline}")
    made = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        opener = urllib.request.build_opener(_SafeRedirects)
        request = urllib.request.Request(url, headers={"User-Agent": "yolodist"})
        with opener.open(request, timeout=timeout) as response, atomic_open(dest) as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            # In a log file (a batch job) a redrawn bar is noise: one line when the file is complete instead.
            bar_shown = progress and bars_wanted()
            started = time.monotonic()
            received = _copy_with_bar(response, f, total, desc or dest.name, bar_shown)
            # http.client returns a short body without complaint when the peer closes early.
            if total is not None and received != total:
                raise DownloadFailed(f"could not download {url} (received {received} of {total} bytes){offline}")
        if progress and not bar_shown:
            LOGGER.info(f"{desc or dest.name}: {received / 2**20:.1f} MiB in {time.monotonic() - started:.1f} s")
    except BaseException as e:
        for folder in made:  # deepest first: parents() runs upwards
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, DownloadFailed):
            raise
        if isinstance(e, urllib.error.URLError | http.client.HTTPException | OSError | ValueError):
            raise DownloadFailed(f"could not download {url} ({describe_error(e)}){offline}") from e
        raise
    return dest


def _copy_with_bar(response: BinaryIO, f: BinaryIO, total: int | None, desc: str, bar_shown: bool) -> int:
    """Copy ``response`` into ``f`` in chunks, advancing a byte progress bar; returns the bytes copied."""
    received = 0
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not bar_shown) as bar:
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received
