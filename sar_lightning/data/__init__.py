"""Data: the image data sets, codes folders (tokenized data and their manifest), the tokenizers, the
``tokenize`` command that writes codes, and the Lightning data module that feeds training.
"""

from sar_lightning.data.codes import data_info, decoder_for, extractor_name, known_data, load_token_split, write_codes
from sar_lightning.data.datamodule import SARDataModule
from sar_lightning.data.datasets import DATASETS, dataset_info, load_images

__all__ = ["DATASETS", "SARDataModule", "data_info", "dataset_info", "decoder_for", "extractor_name", "known_data",
           "load_images", "load_token_split", "write_codes"]
