"""Weights manager: checksums, safe loading, strict keys; the shipped model verifies and loads."""
import json
import pickle

import pytest
import torch

from slicer_ai_common.weights import (WeightsError, find_models, load_into, load_weights_file, save_sharded,
                                      sha256_file)
from SRMASegmenterLib.inference import MODELS_DIR, LiverSegmenter, NoWeightsError
from SRMASegmenterLib.model import SRMAMamba


def test_shipped_model_verifies_and_loads():
    recs = find_models(MODELS_DIR)
    assert recs, "no shipped model folder"
    rec = recs[0]
    rec.verify()
    for f in rec.manifest["files"]:
        assert (rec.folder / f["file"]).stat().st_size <= 40 * 2**20
    split = rec.manifest["training"]["split"]
    # the demo sample (case 20) is held out, so the Dice `make demo` prints is a fair one
    assert "case_20" in split["held_out"] and not set(split["held_out"]) & set(split["train"])
    assert rec.manifest["config"]["out_chans"] == 5 and rec.manifest["train_spacing_ijk"] == [2.5, 2.5, 7.7]
    seg = LiverSegmenter.load(device="cpu")
    assert seg.weights_id.startswith("srma_chaos_t2_5class@")


def test_sharded_roundtrip_and_checksum(tmp_path):
    m = SRMAMamba(dims=8)
    rec = save_sharded(m.state_dict(), tmp_path / "m", "m", {"config": {"dims": 8}}, shard_bytes=64 * 1024)
    assert len(rec.manifest["files"]) > 1
    sd, rec2 = load_weights_file(tmp_path / "m")
    load_into(SRMAMamba(dims=8), sd)
    # damage one shard: the manifest check must refuse it
    f = tmp_path / "m" / rec.manifest["files"][0]["file"]
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_weights_file(tmp_path / "m")


def test_pth_weights_only(tmp_path):
    m = SRMAMamba(dims=8)
    p = tmp_path / "checkpoint.pth"
    torch.save({"model": m.state_dict()}, p)
    sd, _ = load_weights_file(p)
    load_into(SRMAMamba(dims=8), sd)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as fh:
        pickle.dump({"model": Evil()}, fh)
    with pytest.raises(WeightsError, match="could not read weights"):
        load_weights_file(bad)


@pytest.mark.parametrize("content,name,match", [
    (b"not weights at all", "w.txt", "not a weights file"),
    (b"\x00\x01truncated", "w.safetensors", "could not read weights"),
])
def test_bad_files(tmp_path, content, name, match):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(WeightsError, match=match):
        load_weights_file(p)


def test_missing_and_mismatched(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights_file(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsError, match="do not fit"):
        load_into(SRMAMamba(dims=8), SRMAMamba(dims=16).state_dict())
    with pytest.raises(NoWeightsError, match="no trained SRMA-Mamba weights"):
        LiverSegmenter.load(device="cpu", models_dir=tmp_path)
    p = tmp_path / "x.safetensors"
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(2)}, str(p))
    assert sha256_file(p) == sha256_file(p)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_weights_file(p, expected_sha256="0" * 64)
