"""Dagster only: thin wrappers that call :mod:`grsai_pipeline.steps` and the store."""
