"""Dagster only: partitions, resources, the batch step, the re-polling job, the sensor and the
schedule; each calls the core (``engine``, ``store``) and holds no product rule of its own."""
