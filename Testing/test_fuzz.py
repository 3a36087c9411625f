"""Fuzz suite (issue 17): hundreds of malformed inputs written from seeds. Every call must end with either a
valid result or the entry point's own one-line error type (VolumeError, ImageError, WeightsError), never
another exception, and must leave the input file as it was.

Inputs: a small valid NIfTI, NRRD and PNG, and a model manifest, each mutated by random truncation, bit
flips in the header, random bytes, random dtypes / shapes / geometry. The seeds are fixed so a failure
replays; FUZZ_SEEDS=N raises the count (default 400 per family).
"""
import hashlib
import json
import os

import numpy as np
import pytest

from slicer_ai_common.weights import WeightsError
from SRMASegmenterLib.volumes import Geometry, VolumeError, check_array, check_geometry, read_volume, write_volume
from UltraScanClassifierLib.images import ImageError, check_image, read_image

SEEDS = int(os.environ.get("FUZZ_SEEDS", "400"))


def _mutate(data: bytes, rng, header: int) -> bytes:
    b = bytearray(data)
    kind = rng.integers(0, 4)
    if kind == 0:                                   # truncation anywhere
        return bytes(b[: int(rng.integers(0, len(b)))])
    if kind == 1:                                   # bit flips in the header
        for _ in range(int(rng.integers(1, 8))):
            i = int(rng.integers(0, min(header, len(b))))
            b[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(b)
    if kind == 2:                                   # random bytes over a random span
        i = int(rng.integers(0, len(b)))
        n = int(rng.integers(1, 64))
        b[i:i + n] = rng.integers(0, 256, min(n, len(b) - i), dtype=np.uint8).tobytes()
        return bytes(b)
    return rng.integers(0, 256, int(rng.integers(0, 512)), dtype=np.uint8).tobytes()   # garbage


@pytest.fixture(scope="module")
def seeds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    arr = (rng.random((6, 20, 24)) * 1000).astype(np.int16)
    g = Geometry((1.5, 1.2, 5.0), (10.0, -4.0, 2.0), np.eye(3))
    write_volume(arr, g, d / "v.nii.gz")
    write_volume(arr, g, d / "v.nrrd")
    import gzip
    (d / "v.nii").write_bytes(gzip.decompress((d / "v.nii.gz").read_bytes()))
    from PIL import Image
    Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)).save(d / "i.png")
    return d


def _expect(fn, ok_errors):
    """fn() must return or raise one of ok_errors; anything else is a bug."""
    try:
        return fn()
    except ok_errors:
        return None


@pytest.mark.parametrize("src,header", [("v.nii", 348), ("v.nii.gz", 64), ("v.nrrd", 200)])
def test_fuzz_volume_files(seeds_dir, tmp_path, src, header):
    data = (seeds_dir / src).read_bytes()
    ok = 0
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        p = tmp_path / f"f{seed}{src[1:]}"
        bad = _mutate(data, rng, header)
        p.write_bytes(bad)
        before = hashlib.sha256(bad).hexdigest()
        try:
            res = _expect(lambda: read_volume(p), (VolumeError,))
            if res is not None:                     # readable: the checks must still end cleanly
                arr, geom = res
                _expect(lambda: (check_array(arr), check_geometry(geom)), (VolumeError,))
                ok += 1
        except Exception as e:  # noqa: BLE001 - report the seed that broke it
            raise AssertionError(f"{src} seed {seed}: {type(e).__name__}: {e}") from e
        assert hashlib.sha256(p.read_bytes()).hexdigest() == before, f"seed {seed}: the input was changed"
    assert ok < SEEDS                               # the mutations do produce failures


def test_fuzz_image_files(seeds_dir, tmp_path):
    data = (seeds_dir / "i.png").read_bytes()
    for seed in range(SEEDS):
        rng = np.random.default_rng(1000 + seed)
        p = tmp_path / f"f{seed}.png"
        p.write_bytes(_mutate(data, rng, 64))
        try:
            res = _expect(lambda: read_image(p), (ImageError,))
            if res is not None:
                _expect(lambda: check_image(res[0], p.name), (ImageError,))
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"png seed {seed}: {type(e).__name__}: {e}") from e


def _random_array(rng):
    dtype = rng.choice(["uint8", "int16", "float32", "float64", "bool", "complex64", "int64"])
    ndim = int(rng.integers(0, 6))
    shape = tuple(int(rng.integers(0, 12)) for _ in range(ndim))
    a = (rng.standard_normal(shape) * 100).astype(dtype) if dtype != "bool" else rng.random(shape) > 0.5
    if a.size and rng.random() < 0.3 and np.issubdtype(a.dtype, np.floating):
        a.flat[int(rng.integers(0, a.size))] = rng.choice([np.nan, np.inf, -np.inf])
    return a


def test_fuzz_arrays_and_geometry():
    """Random dtypes, shapes and geometry into the checks every entry point runs."""
    for seed in range(SEEDS * 3):
        rng = np.random.default_rng(2000 + seed)
        a = _random_array(rng)
        try:
            _expect(lambda: check_array(a), (VolumeError,))
            _expect(lambda: check_image(a, "x"), (ImageError,))
            sp = tuple(rng.choice([0.0, -1.0, 1.0, 2.5, np.nan, np.inf], 3))
            d = rng.choice([np.eye(3), np.zeros((3, 3)), np.full((3, 3), np.nan), rng.standard_normal((3, 3))])
            _expect(lambda: check_geometry(Geometry(sp, tuple(rng.standard_normal(3)), d)), (VolumeError,))
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"array seed {seed} ({a.dtype}, {a.shape}): {type(e).__name__}: {e}") from e


def _random_json(rng, depth=0):
    k = int(rng.integers(0, 7 if depth < 3 else 4))
    if k == 0:
        return None
    if k == 1:
        return int(rng.integers(-5, 5))
    if k == 2:
        return str(rng.choice(["", "x.safetensors", "../x", "/etc/passwd", "a/b", "..", "ok.safetensors"]))
    if k == 3:
        return float(rng.standard_normal())
    if k == 4:
        return [_random_json(rng, depth + 1) for _ in range(int(rng.integers(0, 3)))]
    return {str(rng.choice(["files", "file", "sha256", "name", "config", "architecture"])): _random_json(rng, depth + 1)
            for _ in range(int(rng.integers(0, 4)))}


def test_fuzz_manifests(tmp_path):
    """Random manifest structures (and byte garbage) through both loaders: WeightsError or a load, never a
    KeyError / TypeError / JSONDecodeError, and never a file outside the folder opened."""
    from SRMASegmenterLib.inference import LiverSegmenter
    from UltraScanClassifierLib.inference import UltrasoundClassifier
    (tmp_path / "ok.safetensors").write_bytes(b"not really weights")
    for seed in range(SEEDS):
        rng = np.random.default_rng(3000 + seed)
        m = _random_json(rng)
        if rng.random() < 0.5:
            m = {"files": [{"file": _random_json(rng), "sha256": _random_json(rng)}], "name": "fuzz",
                 "architecture": rng.choice(["UltraScanNet", "EfficientNet-Lite0", "x", 3])}
        text = json.dumps(m) if rng.random() < 0.9 else rng.integers(0, 256, 40, dtype=np.uint8).tobytes().decode("latin1")
        (tmp_path / "model.json").write_text(text, encoding="latin1")
        for load in (lambda: UltrasoundClassifier.load(tmp_path, device="cpu"),
                     lambda: LiverSegmenter.load(tmp_path, device="cpu")):
            try:
                _expect(load, (WeightsError,))
            except Exception as e:  # noqa: BLE001
                raise AssertionError(f"manifest seed {seed} {text[:120]!r}: {type(e).__name__}: {e}") from e
