"""Fetching and checking the official Omniglot archives (Lake, Salakhutdinov & Tenenbaum 2015, published
in brendenlake/omniglot, folder python/) for the omniglot suite; a helper module, not a plugin.

A download is written to a temporary `.part` file in the target folder and checked there (every byte
the server announced arrived, the published md5 matches, the file is a zip whose member names all stay
inside the folder) before it is renamed into place, so a partial, wrong or hostile file is never left
where the suite would read it. An archive already in place with the wrong md5 is an error, not
something to download over, unless the caller asks for that.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.parse
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TextIO

from harness import HarnessError, UsageError

#: Where the authors publish the archives; `$HARNESS_OMNIGLOT_URL` or the suite option base_url replace it.
OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
URL_ENV = "HARNESS_OMNIGLOT_URL"
#: The md5 digests published beside the two full archives (the small background sets have none).
PUBLISHED_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
#: missing: fetch an official archive that is absent; replace: also fetch over one whose md5 is wrong;
#: never: no network (an absent archive is an error saying where to put it).
DOWNLOAD_MODES = ("missing", "replace", "never")
URL_SCHEMES = ("http", "https", "file")
TIMEOUT_S = 60.0  # seconds without a byte before a download is given up

_md5_memo: dict[tuple[str, int, int], str] = {}


def file_md5(path: Path) -> str:
    """The md5 of a file, remembered per (path, size, modification time): the grid's check and the
    suite both ask for it, and hashing the full archives each time would be wasted work."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _md5_memo:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _md5_memo[key] = digest.hexdigest()
    return _md5_memo[key]


def unsafe_member(name: str) -> str:
    """'' when a zip member name stays inside the folder it would be extracted to, else why not."""
    if "\\" in name:  # a Windows extractor reads "..\\x" as a parent-directory step
        return "contains a backslash"
    if "\0" in name:
        return "contains a NUL byte"
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in path.parts:
        return "climbs out of the folder with '..'"
    return ""


def check_archive(path: Path, shown_as: str | None = None) -> None:
    """Raise a HarnessError unless `path` is a readable zip whose member names all stay inside its folder.

    The suite never extracts, but an archive with such names is not the official one, so it is refused.
    """
    shown = shown_as or str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise HarnessError(f"{shown} is not a readable zip file: {exc}") from None
    for name in names:
        why = unsafe_member(name)
        if why:
            raise HarnessError(f"{shown} holds a member whose path {why}: {name!r}; refusing the archive")


def resolve_base_url(option: str | None) -> str:
    """The suite option, else `$HARNESS_OMNIGLOT_URL`, else the official location; checked to be a URL."""
    url = option or os.environ.get(URL_ENV) or OFFICIAL_URL
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in URL_SCHEMES:
        source = "base_url" if option else f"${URL_ENV}" if os.environ.get(URL_ENV) else "the default"
        raise UsageError(f"{source} must be an {'/'.join(URL_SCHEMES)} URL of the folder holding the "
                         f"Omniglot archives (default {OFFICIAL_URL}), got {url!r}")
    return url


def archive_url(base_url: str, name: str) -> str:
    return base_url.rstrip("/") + "/" + urllib.parse.quote(name)


def download(
    url: str, target: Path, md5: str, *, timeout: float = TIMEOUT_S, stream: TextIO | None = None
) -> None:
    """Fetch `url` to `target` if and only if every check passes; writes one progress line to `stream`
    (default stderr). Nothing is left at `target`, nor any temporary file, when a check fails."""
    import http.client  # here, not at import: registering the suite must stay cheap
    import urllib.error
    import urllib.request

    stream = sys.stderr if stream is None else stream
    official = archive_url(OFFICIAL_URL, target.name)
    by_hand = (f"put {target.name} (md5 {md5}{'' if url == official else ', from ' + official}) in "
               f"{target.parent} by hand, or point the suite option base_url or ${URL_ENV} at a copy")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, part_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise UsageError(f"cannot download {target.name} into {target.parent}: {exc.strerror}; set the suite "
                         f"option data_root (or $HARNESS_DATA) to a writable folder, or {by_hand}") from None
    part = Path(part_name)
    stream.write(f"omniglot: downloading {url} to {target} ... ")
    stream.flush()
    try:
        received, digest, announced = 0, hashlib.md5(usedforsecurity=False), None
        with os.fdopen(fd, "wb") as handle:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    announced = response.headers.get("Content-Length")
                    for block in iter(lambda: response.read(1 << 20), b""):
                        handle.write(block)
                        digest.update(block)
                        received += len(block)
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response's socket
                raise UsageError(f"cannot download {target.name}: {url} answered HTTP {exc.code} "
                                 f"{exc.reason}; {by_hand}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise UsageError(f"cannot download {target.name} from {url} ({type(exc).__name__}: "
                                 f"{reason}); offline? {by_hand}") from None
        if announced is not None and announced.isdigit() and received != int(announced):
            raise HarnessError(f"the download of {url} stopped after {received} of {announced} bytes; "
                               "nothing was kept, try again")
        if digest.hexdigest() != md5:
            raise HarnessError(f"the download of {url} has md5 {digest.hexdigest()}, but the published md5 "
                               f"of {target.name} is {md5}; nothing was kept (a cut or altered file)")
        check_archive(part, shown_as=f"the download of {url}")
        os.replace(part, target)  # atomic on one file system: readers see the old state or the whole file
    except BaseException:
        stream.write("failed\n")
        raise
    finally:
        part.unlink(missing_ok=True)
    stream.write(f"{received / 1e6:.1f} MB, md5 ok\n")


def ensure_archives(folder: Path, names: Sequence[str], *, mode: str, base_url: str | None,
                    verify_md5: bool) -> None:
    """Make the official archives among `names` present and intact in `folder`, as `mode` allows.

    Names without a published md5 are left alone (the caller reports them if absent). With
    `verify_md5`, an official archive already there must match its published md5: otherwise an error
    naming both digests, or (mode "replace") a fresh download over it.
    """
    if mode not in DOWNLOAD_MODES:
        raise UsageError(f"download must be one of {', '.join(DOWNLOAD_MODES)}, got {mode!r}")
    for name in names:
        published = PUBLISHED_MD5.get(name)
        if published is None:
            continue
        path = folder / name
        if path.is_file():
            actual = file_md5(path) if verify_md5 else published
            if actual == published:
                continue
            if mode != "replace":
                raise UsageError(f"{path} has md5 {actual}, but the published md5 of {name} is {published}: "
                                 "it is damaged or not the official file. Delete it, or set the suite option "
                                 "download = 'replace' to fetch it again, or verify_md5 = false to use it as "
                                 "it is")
        elif mode == "never":
            continue
        download(archive_url(resolve_base_url(base_url), name), path, published)
