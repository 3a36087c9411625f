"""Write each module's Resources/Models.json from its model folders (ids, files, sizes, sha256), keeping
the licence, title, default flag and download URLs already in the catalog. Run after exporting weights:

    python scripts/write_model_catalogs.py

Testing/test_catalog.py fails when a catalog no longer matches the folders."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SlicerAICommon"))
from slicer_ai_common.catalog import CATALOG, catalog_entry  # noqa: E402

LICENCE = {"srma_chaos_t2_5class": "weights trained on CHAOS (CC BY-SA 4.0); research use, not a medical device",
           "ultrascannet_busi": "weights trained on BUSI (Al-Dhabyani et al. 2020); research use, not a medical device",
           "efficientnet_lite0_busi": "weights trained on BUSI from ImageNet EfficientNet-Lite0 (Apache-2.0); "
                                      "research use, not a medical device"}
DEFAULT = {"SRMASegmenter": "srma_chaos_t2_5class", "UltraScanClassifier": "efficientnet_lite0_busi"}

for module, default in DEFAULT.items():
    res = ROOT / module / "Resources"
    path = res / CATALOG
    old = {m["id"]: m for m in json.loads(path.read_text())["models"]} if path.is_file() else {}
    models = []
    for folder in sorted(p for p in (res / "Models").iterdir() if (p / "model.json").is_file()):
        prev = old.get(folder.name, {})
        urls = {f["file"]: f["url"] for f in prev.get("files", []) if f.get("url")}
        models.append(catalog_entry(res / "Models", folder.name, licence=prev.get("licence") or LICENCE.get(folder.name, ""),
                                    title=prev.get("title", ""), default=folder.name == default, urls=urls))
    path.write_text(json.dumps({"models": sorted(models, key=lambda m: not m["default"])}, indent=1) + "\n")
    print(f"{path.relative_to(ROOT)}: {', '.join(m['id'] for m in models)}")
