"""Render docs/images/ultrascan_panel.png: what the module's panel shows, drawn from the real logic's
output on slicer-core (real MRML nodes, the shipped model, the bundled sample images).

    python scripts/render_ultrascan_panel.py [--out docs/images/ultrascan_panel.png]
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in ("UltraScanClassifier", "SlicerAICommon", "kernels"):
    sys.path.insert(0, str(ROOT / p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "ultrascan_panel.png"))
    a = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from trame_slicer.core import SlicerApp

    from slicer_ai_mrml.nodes import array_from_volume_node, scalar_volume_from_array
    from UltraScanClassifierLib.images import read_image
    from UltraScanClassifierLogic import UltraScanClassifierLogic

    app = SlicerApp()
    logic = UltraScanClassifierLogic(app.scene)
    samples = sorted((ROOT / "UltraScanClassifier" / "Resources" / "SampleData").glob("*.png"))
    results = []
    for s in samples:
        arr, _ = read_image(s)
        node = scalar_volume_from_array(app.scene, arr[None], name=s.stem)
        results.append((node, logic.classify(node, device="cpu")))
    node, res = next((n, r) for n, r in results if "malignant" in n.GetName())
    img = array_from_volume_node(node)[0]
    heat = array_from_volume_node(res.heatmap_node)[0]
    r = res.classification

    fig = plt.figure(figsize=(10, 5.2))
    ax = fig.add_axes([0.01, 0.08, 0.44, 0.86])
    ax.imshow(img, cmap="gray")
    ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    ax.set_title(f"slice view: {node.GetName()} + heatmap (opacity 0.4)", fontsize=9)
    ax.axis("off")
    fig.text(0.48, 0.9, "UltraScan Classifier", fontsize=13, weight="bold")
    fig.text(0.48, 0.82, f"Verdict: {r.label.capitalize()}", fontsize=12)
    bx = fig.add_axes([0.48, 0.6, 0.46, 0.18])
    cls = list(r.probabilities)
    vals = [100 * r.probabilities[c] for c in cls]
    bx.barh(cls[::-1], vals[::-1], color=["#4c9a2a", "#c0392b", "#2e86c1"][::-1])
    for i, v in enumerate(vals[::-1]):
        bx.text(min(v + 1, 88), i, f"{v:.1f}%", va="center", fontsize=9)
    bx.set_xlim(0, 100)
    bx.set_xlabel("calibrated probability (%)", fontsize=8)
    bx.tick_params(labelsize=9)
    fig.text(0.48, 0.45, f"Model {r.weights_id}\n{r.device}, {r.seconds:.2f} s", fontsize=8)
    fig.text(0.48, 0.36, logic.classifier("cpu").disclaimer, fontsize=8, wrap=True, color="#7b241c")
    rows = logic.table_rows(res.table_node)
    cols = ["Image", "Label", "P(benign)", "P(malignant)", "P(normal)", "Time (s)"]
    tx = fig.add_axes([0.48, 0.02, 0.5, 0.26])
    tx.axis("off")
    cell = [[row[c] if c in ("Image", "Label") else f"{float(row[c]):.3f}" for c in cols] for row in rows]
    t = tx.table(cellText=cell, colLabels=cols, loc="upper left", fontsize=7)
    t.auto_set_font_size(False)
    t.set_fontsize(7)
    tx.set_title("Results table node (persists in the scene)", fontsize=8)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(f"wrote {a.out}: {[(n.GetName(), rr.classification.label) for n, rr in results]}")


if __name__ == "__main__":
    main()
