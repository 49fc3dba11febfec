"""The pipeline's steps as plain functions: prepare, submit, follow (poll), settle.

The Dagster assets in :mod:`grsai_pipeline.defs` are thin wrappers around these; tests and the
CLI call the same code. Database work runs in a worker thread so that it never stalls the
event loop that carries the API requests.
"""
