"""Getting a model onto the machine: the first-run panel (one click to a recommended model) and
Model settings (download, export or compress, variant, device, calibration)."""
