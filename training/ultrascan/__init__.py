"""UltraScanNet training on BUSI: augmentation, data, baselines and teachers, training loop, evaluation driver, export."""
