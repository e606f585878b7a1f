"""Tools around the pipeline: generate test input with its ground truth, reconcile a warehouse."""
