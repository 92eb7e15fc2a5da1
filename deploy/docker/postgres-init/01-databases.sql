-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d):
-- `reftrain` holds the DuckLake catalog (STORE_CATALOG), `registry` Apicurio Registry's storage.
CREATE DATABASE reftrain;
CREATE DATABASE registry;
