"""Volume I/O geometry, canonical orientation, input checks, and the metrics against hand computations."""
import numpy as np
import pytest

from conftest import oblique_geometry
from SRMASegmenterLib.metrics import segmentation_metrics
from SRMASegmenterLib.volumes import (Geometry, VolumeError, check_array, from_canonical, orientation_transform,
                                      read_volume, to_canonical, write_volume)


@pytest.mark.parametrize("perm,flips", [((0, 1, 2), (1, -1, 1)), ((1, 0, 2), (1, 1, -1)), ((2, 0, 1), (-1, 1, 1))])
def test_orientation_roundtrip_and_target(perm, flips):
    rng = np.random.default_rng(0)
    d = np.zeros((3, 3))
    for col, (ax, f) in enumerate(zip(perm, flips)):
        d[ax, col] = f
    arr = rng.normal(size=(5, 6, 7))
    p, fl = orientation_transform(d)
    can = to_canonical(arr, p, fl)
    assert np.array_equal(from_canonical(can, p, fl), arr)


def test_read_write_geometry_exact(tmp_path):
    g = oblique_geometry()
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    for ext in (".nii.gz", ".nrrd"):
        write_volume(arr, g, tmp_path / f"v{ext}")
        back, g2 = read_volume(tmp_path / f"v{ext}")
        assert np.array_equal(back, arr)
        assert g2.equals(g, tol=1e-5)


@pytest.mark.parametrize("arr,match", [
    (np.random.rand(1, 20, 20), "2D image"),
    (np.random.rand(20, 20), "must be 3D"),
    (np.random.rand(4, 20, 20, 3), "components per voxel"),
    (np.full((4, 20, 20), 7.0), "constant"),
    (np.where(np.random.rand(4, 20, 20) > 0.5, np.nan, 1.0), "NaN"),
])
def test_check_array_errors(arr, match):
    with pytest.raises(VolumeError, match=match):
        check_array(arr)


def test_read_errors(tmp_path):
    with pytest.raises(VolumeError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")
    bad = tmp_path / "trunc.nii.gz"
    write_volume(np.random.rand(8, 8, 8).astype(np.float32), Geometry((1, 1, 1), (0, 0, 0), np.eye(3)), bad)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(VolumeError, match="could not read"):
        read_volume(bad)


def test_overlap_metrics_by_hand():
    t = np.zeros((4, 10, 10), bool)
    p = np.zeros_like(t)
    t[1:3, 2:6, 2:6] = True   # 32 voxels
    p[1:3, 4:8, 2:6] = True   # 32 voxels, 16 shared
    m = segmentation_metrics(p, t, (2.0, 1.0, 0.5))
    assert m["dice"] == pytest.approx(2 * 16 / 64)
    assert m["jaccard"] == pytest.approx(16 / 48)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["f2"] == pytest.approx(0.5)
    assert m["volume_pred_ml"] == pytest.approx(32 * 1.0 / 1000)
    assert m["volume_diff_ml"] == pytest.approx(0.0)


def _surface_distances(a, b, spacing):
    """Independent: distances from a's surface voxels to b's surface voxels (brute force, mm)."""
    from scipy import ndimage
    def surf(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0)) * np.asarray(spacing)
    sa, sb = surf(a), surf(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return d.min(1), d.min(0)


def test_surface_metrics_against_independent():
    t = np.zeros((12, 16, 16), bool)
    p = np.zeros_like(t)
    t[3:9, 4:12, 4:12] = True
    p[4:10, 5:13, 4:12] = True
    sp = (3.0, 1.0, 0.8)
    m = segmentation_metrics(p, t, sp)
    dpt, dtp = _surface_distances(p, t, sp)
    assert m["assd_mm"] == pytest.approx((dpt.sum() + dtp.sum()) / (len(dpt) + len(dtp)), rel=1e-3)
    hd95 = max(np.percentile(dpt, 95), np.percentile(dtp, 95))
    assert m["hd95_mm"] == pytest.approx(hd95, rel=0.05)
    same = segmentation_metrics(t, t, sp)
    assert same["dice"] == 1.0 and same["hd95_mm"] == 0.0


def test_distinct_values_equals_numpy_unique():
    """The labelmap check counts values instead of sorting them: the same values and dtype as np.unique,
    for every integer type, negative values, and a range too wide to count (falls back to the sort)."""
    import numpy as np
    from SRMASegmenterLib.volumes import distinct_values
    rng = np.random.default_rng(0)
    for dt in (np.int16, np.uint16, np.uint8, np.int8, np.int32, np.int64, bool):
        x = rng.integers(-5 if np.dtype(dt).kind == "i" else 0, 2 if dt is bool else 300, size=(5, 40, 40)).astype(dt)
        d = distinct_values(x)
        assert np.array_equal(d, np.unique(x)) and d.dtype == np.unique(x).dtype, dt
    wide = np.array([[-2**40, 0, 7, 2**40]], np.int64)
    assert np.array_equal(distinct_values(wide), np.unique(wide))
