"""Development code beside the extension's runtime: training, augmentation, data splitting, evaluation
drivers, export and baselines. Neither Slicer's CMake install nor the runtime wheel ships it; run it from
the repository root (`python -m training.srma.train`, `python -m training.ultrascan.train`)."""
