"""gpurecon: GPU-accelerated encoding models of high-gamma sEEG from word embeddings.

The pipeline reads as stages, each a module with one job:

data (NWB/BIDS reading, synthetic data) -> signal (high gamma) -> embeddings
-> solver (batched ElasticNet, cross-validation) -> evaluation -> outputs.
"""

__version__ = "0.1.0"
