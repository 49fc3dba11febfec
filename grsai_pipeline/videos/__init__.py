"""Archived copies of the videos (SPEC 8): fetched from their expiring URLs, kept in any
fsspec store. Part of the core: knows nothing of Dagster, the CLI or HTTP serving."""
