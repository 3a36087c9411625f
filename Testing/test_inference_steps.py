"""Steps around the liver model: the fast versions (GPU-side normalisation, bounding-box post-processing,
label-based hole filling) give what the plain numpy / scipy calls give."""
import numpy as np
import pytest
from scipy import ndimage

import torch

from SRMASegmenterLib.inference import fill_binary_holes, normalize_intensity, normalize_intensity_tensor, postprocess


def _reference(mask, largest_component=True, fill_holes=True):
    """The obvious whole-array version: scipy label + bincount, then scipy's binary_fill_holes."""
    m = mask.astype(bool)
    if largest_component and m.any():
        lab, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            m = lab == int(sizes.argmax())
    if fill_holes and m.any():
        m = ndimage.binary_fill_holes(m)
    return m.astype(np.uint8)


@pytest.mark.parametrize("seed", range(40))
def test_fill_binary_holes_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 12, size=3))
    m = rng.random(shape) < rng.uniform(0.2, 0.9)
    assert np.array_equal(fill_binary_holes(m), ndimage.binary_fill_holes(m))


def test_fill_binary_holes_fills_a_cavity_and_keeps_an_open_one():
    m = np.zeros((9, 9, 9), bool)
    m[2:7, 2:7, 2:7] = True
    m[3, 3, 3] = False                # enclosed: filled
    m[5, 5, 5:] = False               # a tunnel that reaches the border: stays open
    out = fill_binary_holes(m)
    assert out[3, 3, 3] and not out[5, 5, 5] and not out[5, 5, 6]
    assert np.array_equal(out, ndimage.binary_fill_holes(m))


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("lc,fh", [(True, True), (True, False), (False, True)])
def test_postprocess_in_the_bounding_box_equals_whole_array(seed, lc, fh):
    rng = np.random.default_rng(100 + seed)
    m = np.zeros((20, 24, 18), bool)
    for _ in range(rng.integers(1, 6)):          # a few blobs with holes, some touching the border
        lo = rng.integers(0, [16, 20, 14])
        hi = lo + rng.integers(2, 9, size=3)
        m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    m &= rng.random(m.shape) < 0.93              # pepper holes
    got = postprocess(m, lc, fh)
    assert got.dtype == np.uint8 and got.shape == m.shape
    assert np.array_equal(got, _reference(m, lc, fh))


def test_postprocess_empty_mask():
    assert postprocess(np.zeros((4, 5, 6), np.uint8)).sum() == 0


@pytest.mark.parametrize("seed", range(6))
def test_tensor_normalisation_matches_numpy(seed):
    """The GPU path's normalisation (run here on CPU tensors) against a float64 numpy reference."""
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(2, 30, size=3))
    a = (rng.gamma(2.0, 200.0, size=shape) * (rng.random(shape) < 0.8)).astype(np.int16 if seed % 2 else np.float32)
    lo, hi = np.percentile(a.astype(np.float64), [0.5, 99.5])
    c = np.clip(a.astype(np.float64), lo, hi)
    ref = (c - c.mean()) / c.std()
    got = normalize_intensity_tensor(torch.from_numpy(a.astype(np.float32))).numpy()
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, ref, atol=2e-5)
    np.testing.assert_allclose(normalize_intensity(a), ref, atol=2e-5)


def test_tensor_normalisation_of_a_constant_image_is_zero():
    assert torch.count_nonzero(normalize_intensity_tensor(torch.full((3, 4, 5), 7.0))) == 0
