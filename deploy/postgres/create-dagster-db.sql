-- Run once by the postgres image on an empty data volume (docker-entrypoint-initdb.d): the Dagster
-- instance's database (DAGSTER_PG_URL) beside the application's (POSTGRES_DB, GRSAI_DATABASE_URL).
CREATE DATABASE dagster OWNER grsai;
