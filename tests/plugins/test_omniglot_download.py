"""Downloading the official Omniglot archives, against a real HTTP server on the loopback interface that
serves the small background sets (and damaged or hostile variants of them): good and bad checksums,
truncated transfers, archives with paths escaping the folder, HTTP errors, an unreachable server, and
what the suite and the paper grid do with an existing archive or no network."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("PIL", reason="the Omniglot suite decodes PNG with Pillow (pip install pillow)")
from harness import HarnessError, UsageError  # noqa: E402
from metaharness_plugins.fewshot import omniglot_download  # noqa: E402
from metaharness_plugins.fewshot.omniglot_download import (  # noqa: E402
    OFFICIAL_URL,
    URL_ENV,
    archive_url,
    download,
    file_md5,
    resolve_base_url,
)
from metaharness_plugins.suites.omniglot import OmniglotConfig, OmniglotSuite, check_data  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.plugins.test_omniglot import fabricate_full_archives  # noqa: E402

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
SMALL = ("images_background_small1.zip", "images_background_small2.zip")


@dataclass
class Route:
    """What the server answers for one path: `body`, announced as `length` bytes (default its size)."""

    body: bytes
    length: int | None = None
    status: int = 200


@dataclass
class Server:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: one request per connection, closed after the body, so a short body ends the transfer."""

    def do_GET(self) -> None:
        server: Server = self.server.state  # type: ignore[attr-defined]
        server.hits.append(self.path)
        route = server.routes.get(self.path)
        if route is None or route.status != 200:
            self.send_error(404 if route is None else route.status)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(route.body) if route.length is None else route.length))
        self.end_headers()
        self.wfile.write(route.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: the tests read the client's errors, not the server's log."""


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}/omniglot/")
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(scope="module")
def small_sets() -> dict[str, bytes]:
    if not all((DATA / name).is_file() for name in SMALL):
        pytest.skip(f"the Omniglot small background sets are not in {DATA}")
    return {name: (DATA / name).read_bytes() for name in SMALL}


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_nothing_left(folder: Path) -> None:
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []


# --- one download ------------------------------------------------------------------------------------


def test_good_checksum_lands_the_file_and_the_suite_reads_it(
    server: Server, small_sets: dict[str, bytes], tmp_path: Path
) -> None:
    for name, body in small_sets.items():
        server.routes[f"/omniglot/{name}"] = Route(body)
        progress = io.StringIO()
        download(archive_url(server.url, name), tmp_path / "data" / name, md5(body), stream=progress)
        assert (tmp_path / "data" / name).read_bytes() == body
        target = tmp_path / "data" / name
        assert progress.getvalue() == (f"omniglot: downloading {server.url}{name} to {target} ... "
                                       f"{len(body) / 1e6:.1f} MB, md5 ok\n")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(SMALL)  # no .part left
    suite = OmniglotSuite(OmniglotConfig(data_root=str(tmp_path / "data")))  # the session's cache folder
    assert len(suite.data.characters) == 242 and [h for _, h in suite.data.archives] == [
        hashlib.sha256(small_sets[name]).hexdigest() for name in SMALL]


def test_bad_checksum_is_an_error_and_nothing_is_left(
    server: Server, small_sets: dict[str, bytes], tmp_path: Path
) -> None:
    body = small_sets[SMALL[0]]
    server.routes["/omniglot/images_background.zip"] = Route(body)
    published = "0" * 32
    with pytest.raises(HarnessError, match=rf"has md5 {md5(body)}, but the published md5 of "
                       rf"images_background.zip is {published}; nothing was kept"):
        download(archive_url(server.url, "images_background.zip"), tmp_path / "images_background.zip",
                 published, stream=io.StringIO())
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("announce_full", [True, False], ids=["short-body", "cut-file"])
def test_truncated_transfer_is_an_error_and_nothing_is_left(
    server: Server, small_sets: dict[str, bytes], tmp_path: Path, announce_full: bool
) -> None:
    body = small_sets[SMALL[0]]
    cut = body[: len(body) // 2]
    # short-body: the server announces every byte and sends half; cut-file: a half file, honestly announced.
    server.routes["/omniglot/x.zip"] = Route(cut, length=len(body) if announce_full else None)
    expected = (rf"stopped after {len(cut)} of {len(body)} bytes|IncompleteRead" if announce_full
                else rf"has md5 {md5(cut)}, but the published md5")
    with pytest.raises(HarnessError, match=expected) as info:
        download(archive_url(server.url, "x.zip"), tmp_path / "x.zip", md5(body), stream=io.StringIO())
    assert "nothing was kept" in str(info.value) or "IncompleteRead" in str(info.value)
    assert_nothing_left(tmp_path)


def hostile_zip(name: str, small_sets: dict[str, bytes]) -> bytes:
    """A zip with real Omniglot members and one more whose name is `name`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(small_sets[SMALL[0]])) as small, zipfile.ZipFile(buffer, "w") as archive:
        members = [n for n in small.namelist() if n.endswith(".png")][:40]
        for member in members:
            renamed = member.replace("images_background_small1/", "images_background/")
            archive.writestr(renamed, small.read(member))
        archive.writestr(name, small.read(members[0]))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil.png", "climbs out of the folder"),
        ("images_background/Greek/../../../evil.png", "climbs out of the folder"),
        ("/etc/evil.png", "is an absolute path"),
        ("C:/evil.png", "is an absolute path"),
        ("images_background\\..\\..\\evil.png", "contains a backslash"),
    ],
)
def test_archive_with_a_path_escaping_the_folder_is_refused(
    server: Server, small_sets: dict[str, bytes], tmp_path: Path, member: str, why: str
) -> None:
    body = hostile_zip(member, small_sets)
    server.routes["/omniglot/images_background.zip"] = Route(body)
    with pytest.raises(HarnessError, match=f"holds a member whose path {why}"):
        download(archive_url(server.url, "images_background.zip"), tmp_path / "dl" / "images_background.zip",
                 md5(body), stream=io.StringIO())
    assert_nothing_left(tmp_path / "dl")
    # The same archive put in place by hand is refused by the suite too, before anything is decoded.
    (tmp_path / "images_background_small1.zip").write_bytes(body)
    (tmp_path / "images_background_small2.zip").write_bytes(small_sets[SMALL[1]])
    config = OmniglotConfig(data_root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert f"holds a member whose path {why}" in check_data(config)
    with pytest.raises(HarnessError, match=f"holds a member whose path {why}"):
        OmniglotSuite(config)
    assert not (tmp_path / "cache").exists()


def test_http_404_names_the_url_the_file_and_where_to_put_it(server: Server, tmp_path: Path) -> None:
    url = archive_url(server.url, "images_evaluation.zip")
    with pytest.raises(UsageError) as info:
        download(url, tmp_path / "images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811",
                 stream=io.StringIO())
    message = str(info.value)
    assert f"{url} answered HTTP 404" in message and f"in {tmp_path} by hand" in message
    official = archive_url(OFFICIAL_URL, "images_evaluation.zip")
    assert f"md5 6b91aef0f799c5bb55b94e3f2daec811, from {official}" in message
    assert server.hits == ["/omniglot/images_evaluation.zip"]
    assert_nothing_left(tmp_path)


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/omniglot/images_background.zip"
    progress = io.StringIO()
    with pytest.raises(UsageError, match=rf"cannot download images_background.zip from {url} \(URLError: "
                       rf".*\); offline\? put images_background.zip .* in {tmp_path} by hand"):
        download(url, tmp_path / "images_background.zip", "68d2efa1b9178cc56df9314c21c6e718", stream=progress)
    assert progress.getvalue().endswith("... failed\n")
    assert_nothing_left(tmp_path)


# --- the suite: downloads before use, existing files, settings ------------------------------------------


@pytest.fixture
def official(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Full-layout archives made of the small sets' drawings, standing in for the official ones: their md5
    replaces the published one for the test."""
    if not all((DATA / name).is_file() for name in SMALL):
        pytest.skip(f"the Omniglot small background sets are not in {DATA}")
    made = fabricate_full_archives(tmp_path / "made")
    bodies = {path.name: path.read_bytes() for path in made}
    for name, body in bodies.items():
        monkeypatch.setitem(omniglot_download.PUBLISHED_MD5, name, md5(body))
    return bodies


def standard_config(data_root: Path, **options: object) -> OmniglotConfig:
    return OmniglotConfig(protocol="standard", train_characters=100, val_characters=20,
                          data_root=str(data_root), cache_dir=str(data_root.parent / "cache"), **options)


def test_suite_downloads_absent_archives_in_the_grid_check_then_reads_them(
    server: Server, official: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    for name, body in official.items():
        server.routes[f"/omniglot/{name}"] = Route(body)
    monkeypatch.setenv(URL_ENV, server.url)
    config = standard_config(tmp_path / "data")
    assert check_data(config) == ""  # what the grid calls before running anything: downloads both
    assert sorted(server.hits) == ["/omniglot/images_background.zip", "/omniglot/images_evaluation.zip"]
    err = capsys.readouterr().err
    assert err.count("md5 ok\n") == 2 and err.count("omniglot: downloading") == 2
    suite = OmniglotSuite(config)  # present and intact now: no second download
    assert len(server.hits) == 2 and len(suite.data.characters) == 149
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(official)
    described = suite.describe()["archives"]
    assert [a["md5"] for a in described] == [md5(official[n]) for n in config.archives]


def test_existing_archive_with_a_wrong_md5_is_an_error_unless_asked(
    server: Server, official: dict[str, bytes], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name, body in official.items():
        (data / name).write_bytes(body)
        server.routes[f"/omniglot/{name}"] = Route(body)
    # Another file under the official name: the same drawings, members in another order, so other bytes.
    altered = fabricate_full_archives(tmp_path / "altered", reverse=True)[1].read_bytes()
    (data / "images_evaluation.zip").write_bytes(altered)
    published = md5(official["images_evaluation.zip"])
    with pytest.raises(UsageError, match=rf"images_evaluation.zip has md5 {md5(altered)}, but the published "
                       rf"md5 of images_evaluation.zip is {published}: it is damaged or not the official"):
        OmniglotSuite(standard_config(data, base_url=server.url))
    assert server.hits == [] and (data / "images_evaluation.zip").read_bytes() == altered  # not replaced
    assert "but the published md5" in check_data(standard_config(data, base_url=server.url))
    # verify_md5 = false uses the file as it is, without going online.
    as_is = OmniglotSuite(standard_config(data, verify_md5=False))
    assert server.hits == [] and len(as_is.data.characters) == 149
    # download = "replace" fetches the file again over the damaged one.
    suite = OmniglotSuite(standard_config(data, base_url=server.url, download="replace"))
    assert server.hits == ["/omniglot/images_evaluation.zip"]
    assert file_md5(data / "images_evaluation.zip") == published and len(suite.data.characters) == 149


def test_downloads_off_and_absent_archives_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"Omniglot archives images_background.zip, images_evaluation.zip "
                       r"not found in .*data; .*downloads are off \(download = 'never'\): set download = "
                       r"'missing'"):
        OmniglotSuite(standard_config(tmp_path / "data", download="never"))
    assert_nothing_left(tmp_path / "data")


def test_base_url_comes_from_the_option_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert resolve_base_url(None) == OFFICIAL_URL
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/mirror/")
    assert resolve_base_url(None) == "http://127.0.0.1:9/mirror/"
    assert resolve_base_url("file:///srv/omniglot") == "file:///srv/omniglot"
    assert archive_url("file:///srv/omniglot/", "a b.zip") == "file:///srv/omniglot/a%20b.zip"
    monkeypatch.setenv(URL_ENV, "mirror.example.org/omniglot")
    with pytest.raises(UsageError, match=rf"\${URL_ENV} must be an http/https/file URL"):
        resolve_base_url(None)


# --- the paper grid without the archives, offline ---------------------------------------------------------


def test_paper_grid_offline_without_archives_stops_before_running_anything(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/omniglot/"
    result = run_cli("run", "--grid", "omniglot-paper", "--results", str(tmp_path / "results"), cwd=tmp_path,
                     env={"HARNESS_DATA": str(tmp_path / "data"), URL_ENV: url}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "omniglot-paper.toml" in result.stderr and "suite 'omniglot' cannot run here" in result.stderr
    assert f"cannot download images_background.zip from {url}images_background.zip" in result.stderr
    assert f"in {tmp_path / 'data' / 'omniglot'} by hand" in result.stderr
    assert not (tmp_path / "results").exists()
    assert_nothing_left(tmp_path / "data" / "omniglot")
