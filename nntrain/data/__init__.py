"""Datasets for nntrain: IDX/CIFAR readers, downloads, the shipped mnist-mini, splits, normalisation, batching.

Images are kept as uint8 (N, C, H, W) and labels as int64 (N,); `iterate_batches` converts one batch
at a time to float. Augmentations live in `nntrain.data.augment`.
"""

from nntrain.data.loader import channel_stats, iterate_batches, num_batches, split_validation
from nntrain.data.registry import (DATASETS, Dataset, DatasetInfo, data_info, dataset_info, load_configured,
                                   load_dataset, resolve_root)

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "channel_stats", "data_info", "dataset_info", "iterate_batches",
           "load_configured", "load_dataset", "num_batches", "resolve_root", "split_validation"]
