"""Datasets and training in PyTorch: what hands a float model to the rest of the pipeline."""
