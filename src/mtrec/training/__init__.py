"""Lightning glue: the LightningModule around the step engine, optimizers, callbacks,
checkpoint selection. Lightning's private internals are in one module beside this package,
:mod:`mtrec.lightning_internals`, which data/ imports as well."""
