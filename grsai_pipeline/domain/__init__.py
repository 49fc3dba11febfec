"""The ideas of the product as pure Python: no I/O, no Dagster, no database."""
