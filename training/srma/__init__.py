"""SRMA-Mamba training on CHAOS T2: GPU augmentation, data, training loop, evaluation driver, export."""
