"""Model weights: find installed models, verify sha256 before loading, load user files safely.

A model folder holds `model.json` (the manifest: name, id, config, files with sha256, training record)
and fp16 safetensors shards. Nothing is ever unpickled: safetensors first; a `.pth`/`.pt` file only
through torch.load(weights_only=True).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .messages import torch_load_error_text

MANIFEST = "model.json"


def plain_file_name(name) -> bool:
    """A file name with no folder part, not absolute, not '.' or '..': what a manifest or catalog may name,
    so that it never points the loader at (or prints hashes of) files outside the model folder."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and not Path(name).is_absolute() and Path(name).name == name)


class WeightsError(RuntimeError):
    """No weights, a checksum mismatch, a file that is not weights, or keys that do not fit the model."""


class NoWeightsError(WeightsError):
    """No trained weights are installed and none were given."""


def sha256_file(path: os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelRecord:
    folder: Path
    manifest: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.folder.name)

    @property
    def weights_id(self) -> str:
        """Short id shown to users: name + first 12 hex digits of the first shard's sha256."""
        files = self.manifest.get("files", [])
        digest = files[0]["sha256"][:12] if files else "unknown"
        return f"{self.name}@{digest}"

    def shard_paths(self) -> list:
        """The manifest's weight files, each a plain file name inside the model folder: a name with a
        folder part, an absolute path or '..' is refused (a manifest must not point the loader at, or
        print hashes of, files elsewhere)."""
        files = self.manifest.get("files")
        if not files or not isinstance(files, list):
            raise WeightsError(f"{self.folder / MANIFEST} lists no weight files")
        out = []
        for f in files:
            name = f.get("file") if isinstance(f, dict) else None
            if not plain_file_name(name):
                raise WeightsError(f"{self.folder / MANIFEST}: weight file {name!r} is not a plain file name "
                                   "inside the model folder")
            if not isinstance(f.get("sha256"), str):
                raise WeightsError(f"{self.folder / MANIFEST}: no sha256 for {name}")
            out.append((self.folder / name, f["sha256"]))
        return out

    def verify(self):
        for p, want in self.shard_paths():
            if not p.is_file():
                raise WeightsError(f"weights file missing: {p}")
            got = sha256_file(p)
            if got != want:
                raise WeightsError(f"checksum mismatch for {p}: expected {want[:16]}..., got {got[:16]}...; "
                                   "the file is damaged or not the published one")

    def load_state_dict(self, verify: bool = True):
        from safetensors.torch import load_file
        if verify:
            self.verify()
        sd = {}
        for p, _ in self.shard_paths():
            sd.update(load_file(str(p)))
        return sd


def read_manifest(folder: os.PathLike) -> ModelRecord:
    """The model folder's manifest as a ModelRecord; WeightsError (one line) when it is missing, not JSON,
    not an object, or lists no plain-named weight files."""
    folder = Path(folder)
    m = folder / MANIFEST
    if not m.is_file():
        raise WeightsError(f"{folder} has no {MANIFEST}")
    try:
        manifest = json.loads(m.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{m} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise WeightsError(f"{m} is not a model manifest (a JSON object with 'files')")
    rec = ModelRecord(folder, manifest)
    rec.shard_paths()
    return rec


def find_models(root: os.PathLike) -> list[ModelRecord]:
    """Every folder under root (depth 1) with a manifest."""
    root = Path(root)
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            m = d / MANIFEST
            if m.is_file():
                out.append(read_manifest(d))
    return out


def load_weights_file(path: os.PathLike, expected_sha256: str | None = None):
    """A user-chosen file: a manifest, a .safetensors file, or a .pth/.pt state dict (weights_only)."""
    import torch

    p = Path(path)
    if not p.exists():
        raise WeightsError(f"weights file not found: {p}")
    if p.is_dir() or p.name == MANIFEST:
        folder = p if p.is_dir() else p.parent
        if not (folder / MANIFEST).is_file():
            raise WeightsError(f"{folder} has no {MANIFEST}")
        rec = read_manifest(folder)
        return rec.load_state_dict(), rec
    if expected_sha256 is not None and sha256_file(p) != expected_sha256:
        raise WeightsError(f"checksum mismatch for {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(p))
        elif suffix in (".pth", ".pt", ".ckpt"):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
            sd = obj
            for key in ("state_dict", "model", "ema"):
                if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                    sd = sd[key]
                    break
        else:
            raise WeightsError(f"{p.name}: not a weights file (expected .safetensors, .pth or .pt)")
    except WeightsError:
        raise
    except Exception as e:  # truncated, wrong format, pickled code refused by weights_only
        raise WeightsError(f"could not read weights from {p.name}: {torch_load_error_text(e)}") from e
    if not isinstance(sd, dict) or not sd:
        raise WeightsError(f"{p.name} holds no state dict")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return sd, ModelRecord(p.parent, {"name": p.stem, "files": [{"file": p.name, "sha256": sha256_file(p)}]})


def load_into(model, state_dict):
    """Strict load with a readable error naming the first missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    extra = [k for k in state_dict if k not in own]
    shape = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or extra or shape:
        raise WeightsError("weights do not fit this model: "
                           f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]}), "
                           f"{len(shape)} with other shapes (e.g. {shape[:3]})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()}, strict=True)
    return model


def save_sharded(state_dict, folder: os.PathLike, name: str, manifest_extra: dict, shard_bytes: int = 15 * 2**20,
                 dtype="float16"):
    """Write fp16 safetensors shards of at most shard_bytes and the manifest with their sha256."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tdt = getattr(torch, dtype)
    shards, cur, size = [], {}, 0
    for k, v in state_dict.items():
        v = v.detach().cpu()
        v = v.to(tdt) if v.is_floating_point() else v
        nb = v.numel() * v.element_size()
        if cur and size + nb > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v.contiguous()
        size += nb
    if cur:
        shards.append(cur)
    files = []
    for i, sh in enumerate(shards):
        fn = f"{name}-{i + 1:02d}-of-{len(shards):02d}.safetensors"
        save_file(sh, str(folder / fn))
        files.append({"file": fn, "sha256": sha256_file(folder / fn), "bytes": (folder / fn).stat().st_size})
    manifest = {"name": name, "dtype": dtype, "files": files, **manifest_extra}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return ModelRecord(folder, manifest)
