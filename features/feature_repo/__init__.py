"""The Feast repo configuration files (``feature_store.yaml`` and its Redis profile); see :mod:`features.store`."""
