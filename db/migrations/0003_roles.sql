-- Who may touch the data. Roles are cluster-wide (one RDS instance per environment), so they
-- are created only when absent; grants are per database and repeat harmlessly.
--
--   envfence_writer   INSERT and SELECT; no UPDATE, DELETE or TRUNCATE: provenance, once
--                     written, cannot be rewritten.
--   envfence_analyst  SELECT only.
--   worker, analyst   login users for IAM database authentication (members of rds_iam on RDS;
--                     a NOLOGIN stand-in is created on plain PostgreSQL). No passwords.

DO $$
DECLARE
    spec text[];
BEGIN
    FOREACH spec SLICE 1 IN ARRAY ARRAY[
        ARRAY['rds_iam', 'NOLOGIN'],
        ARRAY['envfence_writer', 'NOLOGIN'],
        ARRAY['envfence_analyst', 'NOLOGIN'],
        ARRAY['worker', 'LOGIN'],
        ARRAY['analyst', 'LOGIN']
    ] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = spec[1]) THEN
            EXECUTE format('CREATE ROLE %I %s', spec[1], spec[2]);
        END IF;
    END LOOP;
END;
$$;

GRANT envfence_writer TO worker;
GRANT envfence_analyst TO analyst;
GRANT rds_iam TO worker, analyst;

GRANT USAGE ON SCHEMA envfence TO envfence_writer, envfence_analyst;
GRANT SELECT ON envfence.environment_identity TO envfence_writer, envfence_analyst;

GRANT SELECT, INSERT ON envfence.events, envfence.curated TO envfence_writer;
GRANT USAGE ON SEQUENCE envfence.events_id_seq, envfence.curated_id_seq TO envfence_writer;

GRANT SELECT ON envfence.events, envfence.curated TO envfence_analyst;
