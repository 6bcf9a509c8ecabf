-- Live experiments inside an environment (feature-flag variants), kept apart row by row.
--
-- The worker evaluates the environment's flag set (AWS AppConfig multi-variant flags) for each
-- record and stamps every row it writes with
--   flag_set_version  the version label of the flag set it evaluated (AppConfig's VersionLabel),
--   variants          {flag: {"variant": name, "enabled": bool, "default": bool,
--                             "experimental": bool}} for every flag of that set,
--   experimental      true exactly when some variant that produced the row is experimental.
-- Rows written before this migration carry no stamp (NULL); every new row must.
--
-- The provenance fence of 0002 is the place that refuses what does not belong: its trigger now
-- also refuses an unstamped row, a malformed stamp, and a row produced by an experimental variant
-- that is not marked as such (in production as everywhere). CHECK constraints back the marking
-- up where triggers do not fire.
--
-- Analysts separate control from variant rows through one view per table,
-- envfence.events_by_variant and envfence.curated_by_variant: a row per (row, flag), with the
-- variant, its arm ('control' for the default variant, else 'variant') and whether it is
-- experimental. README, "Feature flags and live experiments", shows the query.

ALTER TABLE envfence.events
    ADD COLUMN flag_set_version text,
    ADD COLUMN variants jsonb,
    ADD COLUMN experimental boolean NOT NULL DEFAULT false;
ALTER TABLE envfence.curated
    ADD COLUMN flag_set_version text,
    ADD COLUMN variants jsonb,
    ADD COLUMN experimental boolean NOT NULL DEFAULT false;

-- NOT VALID: the constraints hold for every row written from now on; the rows already there
-- have just got NULL stamps and experimental = false, which meet them all, so there is nothing
-- to check, and a large production table is not scanned while the migration holds its lock.
DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['events', 'curated'] LOOP
        EXECUTE format(
            'ALTER TABLE envfence.%I
                 ADD CONSTRAINT %I CHECK (flag_set_version ~ ''^[A-Za-z0-9._-]{1,64}$'') NOT VALID,
                 ADD CONSTRAINT %I CHECK ((flag_set_version IS NULL) = (variants IS NULL)) NOT VALID,
                 ADD CONSTRAINT %I CHECK (jsonb_typeof(variants) = ''object'') NOT VALID,
                 ADD CONSTRAINT %I CHECK (
                     variants IS NULL
                     OR experimental = jsonb_path_exists(variants, ''$.* ? (@.experimental == true)'')
                 ) NOT VALID',
            tbl,
            tbl || '_flag_set_version_label',
            tbl || '_stamped_whole',
            tbl || '_variants_object',
            tbl || '_experimental_rows_marked'
        );
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION envfence.enforce_provenance() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident envfence.environment_identity%ROWTYPE;
    problem text;
    flag text;
    stamp jsonb;
    experimental_variant text;
BEGIN
    SELECT * INTO ident FROM envfence.environment_identity;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'envfence: this database has no environment identity; run db/migrate.py'
            USING ERRCODE = 'check_violation';
    END IF;

    IF NEW.source IS DISTINCT FROM ident.tier THEN
        problem := format('source must be %L, got %L', ident.tier, NEW.source);
    ELSIF NEW.experiment_id IS DISTINCT FROM ident.experiment_id THEN
        problem := CASE WHEN ident.experiment_id IS NULL
            THEN format('experiment_id must be NULL, got %L', NEW.experiment_id)
            ELSE format('experiment_id must be %L, got %L', ident.experiment_id, NEW.experiment_id)
        END;
    ELSIF NEW.environment IS DISTINCT FROM ident.environment THEN
        problem := format('environment must be %L, got %L', ident.environment, NEW.environment);
    ELSIF TG_OP = 'INSERT' AND (NEW.flag_set_version IS NULL OR NEW.variants IS NULL) THEN
        problem := 'the row carries no flag set version and variants (the worker stamps every row)';
    ELSIF NEW.variants IS NOT NULL AND jsonb_typeof(NEW.variants) <> 'object' THEN
        problem := format('variants must be a JSON object {flag: {...}}, got %s', NEW.variants);
    END IF;

    IF problem IS NULL AND NEW.variants IS NOT NULL THEN
        FOR flag, stamp IN SELECT key, value FROM jsonb_each(NEW.variants) LOOP
            IF jsonb_typeof(stamp) IS DISTINCT FROM 'object'
               OR jsonb_typeof(stamp -> 'variant') IS DISTINCT FROM 'string'
               OR jsonb_typeof(stamp -> 'enabled') IS DISTINCT FROM 'boolean'
               OR jsonb_typeof(stamp -> 'default') IS DISTINCT FROM 'boolean'
               OR jsonb_typeof(stamp -> 'experimental') IS DISTINCT FROM 'boolean' THEN
                problem := format(
                    'variants.%s must be {"variant": text, "enabled", "default", "experimental": '
                    'booleans}, got %s', flag, stamp);
                EXIT;
            END IF;
            IF (stamp ->> 'experimental')::boolean AND experimental_variant IS NULL THEN
                experimental_variant := format('%s=%s', flag, stamp ->> 'variant');
            END IF;
        END LOOP;
        IF problem IS NULL AND experimental_variant IS NOT NULL AND NOT NEW.experimental THEN
            problem := format(
                'the row was produced by the experimental variant %s but is not marked '
                'experimental', experimental_variant);
        ELSIF problem IS NULL AND experimental_variant IS NULL AND NEW.experimental THEN
            problem := 'the row is marked experimental but no variant that produced it is';
        END IF;
    END IF;

    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'envfence: row rejected by the % database of environment %: %',
            ident.tier, ident.environment, problem
            USING ERRCODE = 'check_violation',
                  TABLE = TG_TABLE_NAME,
                  SCHEMA = TG_TABLE_SCHEMA,
                  HINT = 'rows may only carry the provenance of the environment owning the '
                         'database, stamped with the flag variants that produced them';
    END IF;
    RETURN NEW;
END;
$$;

CREATE VIEW envfence.events_by_variant AS
SELECT e.id, e.message_id, e.received_at, e.source, e.experiment_id, e.environment,
       e.flag_set_version, v.key AS flag, v.value ->> 'variant' AS variant,
       CASE WHEN (v.value ->> 'default')::boolean THEN 'control' ELSE 'variant' END AS arm,
       (v.value ->> 'enabled')::boolean AS enabled,
       (v.value ->> 'experimental')::boolean AS experimental
  FROM envfence.events AS e
 CROSS JOIN LATERAL jsonb_each(e.variants) AS v (key, value);

CREATE VIEW envfence.curated_by_variant AS
SELECT c.id, c.event_id, c.key, c.value, c.created_at, c.source, c.experiment_id, c.environment,
       c.flag_set_version, v.key AS flag, v.value ->> 'variant' AS variant,
       CASE WHEN (v.value ->> 'default')::boolean THEN 'control' ELSE 'variant' END AS arm,
       (v.value ->> 'enabled')::boolean AS enabled,
       (v.value ->> 'experimental')::boolean AS experimental
  FROM envfence.curated AS c
 CROSS JOIN LATERAL jsonb_each(c.variants) AS v (key, value);

GRANT SELECT ON envfence.events_by_variant, envfence.curated_by_variant
    TO envfence_analyst, envfence_writer;
