-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d), as the
-- superuser; also the set-up for a PostgreSQL of your own (deploy/k8s/README.md):
--   CATALOG_DB_PASSWORD=... REGISTRY_DB_PASSWORD=... psql -v ON_ERROR_STOP=1 -U postgres -f 01-databases.sql
-- Least-privilege roles (docs/security.md, issue 17): nobody but the superuser can create databases
-- or roles; each role owns one database and may connect to no other.
--   reftrain  the services and the init job: owns `reftrain`, the DuckLake catalog (DuckLake creates
--             its tables at the first ATTACH and inlined-data tables later: DDL in its own database)
--   registry  Apicurio Registry: owns `registry`, its storage
-- The passwords come from the environment (psql 15 \getenv); an unset one stops the script.
\getenv catalog_pw CATALOG_DB_PASSWORD
\getenv registry_pw REGISTRY_DB_PASSWORD
\set ON_ERROR_STOP 1
\if :{?catalog_pw}
\else
  DO $$BEGIN RAISE EXCEPTION 'CATALOG_DB_PASSWORD is not set'; END$$;
\endif
\if :{?registry_pw}
\else
  DO $$BEGIN RAISE EXCEPTION 'REGISTRY_DB_PASSWORD is not set'; END$$;
\endif
CREATE ROLE reftrain LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'catalog_pw';
CREATE ROLE registry LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'registry_pw';
CREATE DATABASE reftrain OWNER reftrain;
CREATE DATABASE registry OWNER registry;
REVOKE ALL ON DATABASE reftrain, registry, postgres FROM PUBLIC;
