"""The application database (SQLAlchemy Core, SQLite and PostgreSQL): tables, migrations and
the few transactions the product needs. Money moves only here, inside transactions guarded by
the unique keys of :mod:`grsai_pipeline.store.schema`."""
