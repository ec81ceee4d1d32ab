"""The offline dataset: collection, storage, replay (frames for the LVLM) and its card."""

from rgvlm.data.storage import OfflineDataset, load_dataset

__all__ = ["OfflineDataset", "load_dataset"]
