"""A module's model catalog, `Resources/Models.json` (as SlicerMONAIAuto3DSeg keeps one), and the download
of what it lists but is not on disk.

    {"models": [{"id": "srma_chaos_t2_5class", "title": "...", "licence": "...", "default": true,
                 "files": [{"file": "model.json", "sha256": "...", "bytes": 2256, "url": "https://..."},
                           {"file": "...-01-of-03.safetensors", "sha256": "...", "bytes": 13029008}, ...]}]}

A model lives in `Models/<id>/`; every file the catalog names is checked there (size, and sha256 when it
was fetched) and, when missing or short, downloaded from its `url`: into `<file>.part` beside it, resumed
with an HTTP Range request when a partial file is there, checked against the sha256, then renamed into
place, so a cancelled or failed download leaves no file the loader would take for whole. Offline, or
with no URL, the error says which file to put where. Standard library only (urllib).
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from .weights import MANIFEST, NoWeightsError, WeightsError, plain_file_name, sha256_file

CATALOG = "Models.json"


class DownloadError(WeightsError):
    """A catalogued file could not be fetched (offline, server error, wrong checksum)."""


def read_catalog(path: os.PathLike) -> list:
    """The catalog's model entries; WeightsError (one line) for a catalog that is not what it should be."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        models = data["models"]
        for m in models:
            if not isinstance(m.get("id"), str) or not isinstance(m.get("files"), list):
                raise KeyError("id / files")
            for f in m["files"]:
                name = f["file"]
                if not plain_file_name(name):
                    raise WeightsError(f"{p}: file {name!r} of {m['id']} is not a plain file name")
                if not isinstance(f.get("sha256"), str):
                    raise KeyError(f"sha256 of {name}")
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{p} is not a model catalog ({e})") from None
    return models


def catalog_entry(models_dir: os.PathLike, model_id: str, licence: str = "", title: str = "",
                  default: bool = False, urls: dict | None = None) -> dict:
    """A catalog entry for a model folder on disk: its manifest and every file it lists, with sizes and
    sha256 (what a release script writes into Models.json; urls: file name -> download URL)."""
    folder = Path(models_dir) / model_id
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    names = [MANIFEST] + [f["file"] for f in manifest["files"]]
    files = []
    for n in names:
        f = {"file": n, "sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size}
        if urls and n in urls:
            f["url"] = urls[n]
        files.append(f)
    return {"id": model_id, "title": title or manifest.get("task", model_id), "licence": licence,
            "default": default, "files": files}


def download(url: str, dest: os.PathLike, sha256: str, size: int | None = None, progress=None,
             timeout: float = 30.0, chunk: int = 1 << 20) -> Path:
    """url -> dest through dest.part (resumed with a Range request if present), sha256-checked, renamed.
    progress: slicer_ai_common.progress.Progress (its Cancel stops between chunks and keeps the .part)."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    host = urllib.request.urlparse(url).netloc or url
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and size is not None and have == size:      # the .part is already whole
            resp = None
        else:
            raise DownloadError(f"could not download {dest.name} from {host}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not reach {host} to download {dest.name} ({reason}); offline? Put the file "
                            f"there by hand: {dest}") from None
    if resp is not None:
        with resp:
            mode = "ab" if have and resp.status == 206 else "wb"      # a server without ranges sends it all
            done = have if mode == "ab" else 0
            total = size or (done + int(resp.headers.get("Content-Length") or 0)) or None
            with open(part, mode) as out:
                while True:
                    if progress is not None:
                        progress.check()                              # Cancelled: the .part stays for next time
                    block = resp.read(chunk)
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    if progress is not None and total:
                        progress.step(f"downloading {dest.name}", min(1.0, done / total))
    got = sha256_file(part)
    if got != sha256:
        part.unlink()
        raise DownloadError(f"{dest.name} from {host} has sha256 {got[:12]}..., the catalog says {sha256[:12]}...; "
                            "the partial file was removed")
    os.replace(part, dest)
    return dest


def ensure_model(catalog_path: os.PathLike, model_id: str, models_dir: os.PathLike, progress=None) -> Path:
    """Models/<id>/ with every file the catalog lists: present ones are kept when their size is right
    (the loader checks shard hashes), the others downloaded. -> the model folder."""
    entries = {m["id"]: m for m in read_catalog(catalog_path)}
    if model_id not in entries:
        raise WeightsError(f"{model_id!r} is not in {catalog_path} (listed: {', '.join(entries) or 'none'})")
    folder = Path(models_dir) / model_id
    for f in entries[model_id]["files"]:
        path = folder / f["file"]
        if path.is_file() and (f.get("bytes") is None or path.stat().st_size == f["bytes"]):
            continue
        if not f.get("url"):
            raise WeightsError(f"{model_id}: {f['file']} is missing from {folder} and the catalog gives no URL "
                               "to fetch it; reinstall the extension")
        download(f["url"], path, f["sha256"], f.get("bytes"), progress)
    return folder


def default_model(catalog_path: os.PathLike) -> str | None:
    """The id of the catalog's default model (the first one if none is marked)."""
    models = read_catalog(catalog_path)
    marked = [m["id"] for m in models if m.get("default")]
    return (marked or [m["id"] for m in models] or [None])[0]


def load_model_weights(model, models_dir: os.PathLike, *, default: str | None = None, verify: bool = True,
                       what: str = "model"):
    """The one weights loader of both modules: `model` is None (the catalog's default, or `default`, or the
    only/first model folder), the id of a shipped model, a model folder, its model.json, or a weights file
    (.safetensors / .pth state dict). Catalogued models missing from disk are fetched (`ensure_model`).
    -> (state_dict, ModelRecord). Each module builds its network from `record.manifest["config"]`. `what`
    names the model family in NoWeightsError ("no trained SRMA-Mamba weights are installed")."""
    from .weights import find_models, load_weights_file, read_manifest

    models_dir = Path(models_dir)
    catalog = models_dir.parent / CATALOG
    listed = {m["id"] for m in read_catalog(catalog)} if catalog.is_file() else set()
    text = str(model) if model else ""
    bare = bool(text) and all(ch.isalnum() or ch in "_-" for ch in text)       # a name, not a path
    if model is not None and not (bare and not Path(text).exists()):
        path = Path(model)
        if not path.exists():
            raise WeightsError(f"no weights at {path} (not found): choose a model folder, model.json or weights file")
        folder = path if path.is_dir() else (path.parent if path.name == MANIFEST else None)
        if folder is None:
            return load_weights_file(path)
        rec = read_manifest(folder)
        return rec.load_state_dict(verify=verify), rec
    name = text or default or (default_model(catalog) if listed else None)
    if name is None:                                  # no catalog: the first model folder there
        recs = find_models(models_dir)
        if not recs:
            raise NoWeightsError(f"no trained {what} weights are installed (looked in {models_dir}); install a "
                                 "model folder there or choose a weights file (--weights)")
        return recs[0].load_state_dict(verify=verify), recs[0]
    if name in listed:
        ensure_model(catalog, name, models_dir)
    if not (models_dir / name / MANIFEST).is_file():
        shipped = sorted(listed | {r.folder.name for r in find_models(models_dir)})
        raise WeightsError(f"no shipped model named {name!r} (shipped: {', '.join(shipped) or 'none'}); "
                           "reinstall the extension or choose a model folder or weights file")
    rec = read_manifest(models_dir / name)
    return rec.load_state_dict(verify=verify), rec
