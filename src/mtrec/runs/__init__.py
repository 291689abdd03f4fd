"""Run bookkeeping: run and sweep names, the run-folder record, sweep summaries and
TensorBoard extras. Nothing here takes part in learning."""
