"""The textseg MONAI Label app's library: per-model configs, infer and train tasks, datastore, transforms."""
