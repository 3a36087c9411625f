"""Pieces both modules share: weights manager (sha256-checked safetensors), device choice with
out-of-memory fallback, progress/cancel plumbing, dependency check. No slicer or Qt imports."""
