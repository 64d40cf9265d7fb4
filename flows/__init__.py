"""Prefect flows (thin): detect-scene, monitor-region, retrain, and the `m2cd` console script."""
