"""Lightning glue: the LightningModule around the step engine, optimizers, callbacks,
checkpoint selection, and Lightning's private internals (in one module,
:mod:`mtrec.training.lightning_internals`)."""
