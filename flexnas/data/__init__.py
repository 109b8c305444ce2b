"""Datasets as deterministic, resumable batch streams: `build_data(DataConfig(...), device)`.

Small datasets are decoded once (cached on disk), kept as uint8 tensors on the training device and
augmented there; large ones stream through DataLoader workers with the same augmentation.
"""
from flexnas.data.batches import Augment, Batches, EmptyBatches, StreamBatches, TensorBatches
from flexnas.data.build import DataBundle, build_data, cache_path
from flexnas.data.config import DATASETS, DataConfig
from flexnas.errors import DataError

__all__ = ["Augment", "Batches", "DATASETS", "DataBundle", "DataConfig", "DataError", "EmptyBatches",
           "StreamBatches", "TensorBatches", "build_data", "cache_path"]
