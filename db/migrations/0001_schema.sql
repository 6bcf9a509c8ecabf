-- The envfence schema: who this database belongs to, raw events and curated rows.
--
-- Every data row carries its provenance: `source` ('production' | 'experiment'), `experiment_id`
-- (NULL exactly for production rows) and `environment` (the Pulumi stack). 0002 fences them to
-- the identity recorded here; 0003 creates the roles that may read and write them.
--
-- The runner (db/migrate.py) sets envfence.environment, envfence.tier and envfence.experiment_id
-- for the transaction. By hand:  SET envfence.environment = 'prod'; SET envfence.tier =
-- 'production'; SET envfence.experiment_id = '';  then \i this file.

CREATE SCHEMA IF NOT EXISTS envfence;
REVOKE ALL ON SCHEMA envfence FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- One row, written once: the environment this database serves.
CREATE TABLE envfence.environment_identity (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    environment   text NOT NULL CHECK (environment ~ '^[a-z][a-z0-9-]{0,26}[a-z0-9]$'),
    tier          text NOT NULL CHECK (tier IN ('production', 'experiment')),
    experiment_id text CHECK (experiment_id ~ '^[a-z0-9][a-z0-9-]{0,14}[a-z0-9]$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT identity_experiment_id_iff_experiment
        CHECK ((tier = 'production') = (experiment_id IS NULL)),
    CONSTRAINT identity_stack_names_experiment
        CHECK (environment NOT LIKE 'experiment-%'
               OR environment IS NOT DISTINCT FROM 'experiment-' || experiment_id)
);

INSERT INTO envfence.environment_identity (environment, tier, experiment_id)
VALUES (
    current_setting('envfence.environment'),
    current_setting('envfence.tier'),
    NULLIF(current_setting('envfence.experiment_id'), '')
);

CREATE FUNCTION envfence.identity_is_fixed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'envfence: the environment identity of a database is fixed at creation (% refused)',
        TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'a database belongs to one environment for its whole life; create a new one';
END;
$$;

CREATE TRIGGER identity_is_fixed
    BEFORE UPDATE OR DELETE ON envfence.environment_identity
    FOR EACH ROW EXECUTE FUNCTION envfence.identity_is_fixed();
CREATE TRIGGER identity_is_fixed_truncate
    BEFORE TRUNCATE ON envfence.environment_identity
    FOR EACH STATEMENT EXECUTE FUNCTION envfence.identity_is_fixed();

-- Raw records, one per ingested message.
CREATE TABLE envfence.events (
    id            bigserial PRIMARY KEY,
    message_id    text UNIQUE,  -- the SQS message id: a redelivered message is stored once
    received_at   timestamptz NOT NULL DEFAULT now(),
    payload       jsonb NOT NULL,
    source        text NOT NULL,
    experiment_id text,
    environment   text NOT NULL,
    CONSTRAINT events_source_known CHECK (source IN ('production', 'experiment')),
    CONSTRAINT events_experiment_id_iff_experiment
        CHECK ((source = 'production') = (experiment_id IS NULL))
);

-- Curated rows derived from an event.
CREATE TABLE envfence.curated (
    id            bigserial PRIMARY KEY,
    event_id      bigint NOT NULL REFERENCES envfence.events (id),
    key           text NOT NULL CHECK (key <> ''),
    value         numeric NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    source        text NOT NULL,
    experiment_id text,
    environment   text NOT NULL,
    CONSTRAINT curated_event_key_unique UNIQUE (event_id, key),
    CONSTRAINT curated_source_known CHECK (source IN ('production', 'experiment')),
    CONSTRAINT curated_experiment_id_iff_experiment
        CHECK ((source = 'production') = (experiment_id IS NULL))
);
