"""MovieLens data: files, tensors and the LightningDataModule."""
