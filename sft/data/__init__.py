from sft.data.datamodule import SFTDataModule
from sft.data.sources import DataError, Table, read_table

__all__ = ["SFTDataModule", "DataError", "Table", "read_table"]
