"""Issue 14 item 5: each module's Resources/Models.json catalog agrees with its model folders, and what it
lists but is not on disk is downloaded: from a local HTTP server on 127.0.0.1 (with Range support, as
release hosts have), resumed from a partial file, sha256-checked, renamed into place only when whole;
offline, a wrong checksum and Cancel each end with a specific error and no file the loader would take."""
import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from conftest import ROOT
from slicer_ai_common.catalog import (CATALOG, DownloadError, catalog_entry, default_model, download, ensure_model,
                                      read_catalog)
from slicer_ai_common.progress import Cancelled, Progress
from slicer_ai_common.weights import WeightsError


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with 'Range: bytes=N-' answered 206 (the standard library's handler ignores ranges)."""
    seen = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        _RangeHandler.seen.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        if start >= len(data) and rng:
            self.send_error(416)
            return
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)   # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    _RangeHandler.seen = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _blob(n=3 * 2**20 + 123):
    data = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    return data, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("module", ["SRMASegmenter", "UltraScanClassifier"])
def test_shipped_catalogs_match_their_model_folders(module):
    res = ROOT / module / "Resources"
    models = read_catalog(res / CATALOG)
    folders = sorted(p.name for p in (res / "Models").iterdir() if (p / "model.json").is_file())
    assert sorted(m["id"] for m in models) == folders
    for m in models:
        fresh = catalog_entry(res / "Models", m["id"])
        assert [(f["file"], f["sha256"], f["bytes"]) for f in m["files"]] == \
               [(f["file"], f["sha256"], f["bytes"]) for f in fresh["files"]], \
               f"{module}/Resources/{CATALOG} is stale for {m['id']}: run python scripts/write_model_catalogs.py"
        assert m["licence"]
    assert sum(bool(m["default"]) for m in models) == 1


def test_download_fresh_resumed_and_already_whole(server, tmp_path):
    root, url = server
    data, sha = _blob()
    (root / "w.bin").write_bytes(data)
    steps = []
    got = download(f"{url}/w.bin", tmp_path / "a" / "w.bin", sha, len(data), Progress(lambda s, f: steps.append(f)),
                   chunk=1 << 20)
    assert got.read_bytes() == data and not (tmp_path / "a" / "w.bin.part").exists()
    assert steps and steps[-1] == 1.0 and _RangeHandler.seen == [None]
    part = tmp_path / "b" / "w.bin.part"
    part.parent.mkdir()
    part.write_bytes(data[:1_000_000])                      # an interrupted earlier download
    download(f"{url}/w.bin", tmp_path / "b" / "w.bin", sha, len(data))
    assert (tmp_path / "b" / "w.bin").read_bytes() == data and _RangeHandler.seen[-1] == "bytes=1000000-"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "w.bin.part").write_bytes(data)       # whole but not yet renamed: the server says 416
    download(f"{url}/w.bin", tmp_path / "c" / "w.bin", sha, len(data))
    assert (tmp_path / "c" / "w.bin").read_bytes() == data


def test_wrong_checksum_offline_and_cancel_leave_no_whole_looking_file(server, tmp_path):
    root, url = server
    data, sha = _blob()
    (root / "w.bin").write_bytes(data)
    with pytest.raises(DownloadError, match="sha256 .* the catalog says"):
        download(f"{url}/w.bin", tmp_path / "w.bin", "0" * 64, len(data))
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.part").exists()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{url}/nope.bin", tmp_path / "w.bin", sha)
    prog = Progress(lambda s, f: prog.cancel() if f > 0.2 else None)
    with pytest.raises(Cancelled):
        download(f"{url}/w.bin", tmp_path / "w.bin", sha, len(data), prog, chunk=1 << 19)
    assert not (tmp_path / "w.bin").exists() and 0 < (tmp_path / "w.bin.part").stat().st_size < len(data)
    download(f"{url}/w.bin", tmp_path / "w.bin", sha, len(data))    # the next run resumes it
    assert (tmp_path / "w.bin").read_bytes() == data
    with pytest.raises(DownloadError, match=r"could not reach 127\.0\.0\.1:9 .*offline\? Put the file there by hand"):
        download("http://127.0.0.1:9/w.bin", tmp_path / "z.bin", sha, timeout=5)
    assert not (tmp_path / "z.bin").exists()


def test_the_liver_loader_fetches_a_catalogued_model_that_is_not_on_disk(server, tmp_path, tiny_model_folder):
    """A Resources/ with Models.json and a model folder whose weights are missing: LiverSegmenter.load()
    downloads them from the catalog's URL, checks them and loads; without a URL the error says so."""
    from SRMASegmenterLib.inference import LiverSegmenter
    root, url = server
    models = tmp_path / "Resources" / "Models"
    shutil.copytree(tiny_model_folder, models / "tiny")
    manifest = json.loads((models / "tiny" / "model.json").read_text())
    names = [f["file"] for f in manifest["files"]]
    entry = catalog_entry(models, "tiny", licence="test", default=True, urls={n: f"{url}/{n}" for n in names})
    for n in names:
        shutil.move(models / "tiny" / n, root / n)
    (tmp_path / "Resources" / CATALOG).write_text(json.dumps({"models": [entry]}))
    assert default_model(tmp_path / "Resources" / CATALOG) == "tiny"
    seg = LiverSegmenter.load(device="cpu", models_dir=models)
    assert all((models / "tiny" / n).is_file() for n in names) and seg.weights_id.startswith("tiny@")
    (models / "tiny" / names[0]).unlink()
    for f in entry["files"]:
        f.pop("url", None)
    (tmp_path / "Resources" / CATALOG).write_text(json.dumps({"models": [entry]}))
    with pytest.raises(WeightsError, match="missing .* no URL"):
        ensure_model(tmp_path / "Resources" / CATALOG, "tiny", models)
