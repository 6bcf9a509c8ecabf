-- The provenance fence: a row whose source, experiment_id or environment is not this database's
-- own is rejected.
--
-- Two layers. A BEFORE trigger reads envfence.environment_identity and raises a check_violation
-- that says what was wrong; CHECK constraints carrying the identity as literals back it up
-- (they hold even where triggers do not fire, e.g. session_replication_role = replica).

CREATE FUNCTION envfence.enforce_provenance() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident envfence.environment_identity%ROWTYPE;
    problem text;
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
    END IF;

    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'envfence: row rejected by the % database of environment %: %',
            ident.tier, ident.environment, problem
            USING ERRCODE = 'check_violation',
                  TABLE = TG_TABLE_NAME,
                  SCHEMA = TG_TABLE_SCHEMA,
                  HINT = 'rows may only carry the provenance of the environment owning the database';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_enforce_provenance
    BEFORE INSERT OR UPDATE ON envfence.events
    FOR EACH ROW EXECUTE FUNCTION envfence.enforce_provenance();
CREATE TRIGGER curated_enforce_provenance
    BEFORE INSERT OR UPDATE ON envfence.curated
    FOR EACH ROW EXECUTE FUNCTION envfence.enforce_provenance();

DO $$
DECLARE
    ident envfence.environment_identity%ROWTYPE;
    fence text;
    tbl text;
BEGIN
    SELECT * INTO STRICT ident FROM envfence.environment_identity;
    fence := format(
        'source = %L AND experiment_id IS NOT DISTINCT FROM %L AND environment = %L',
        ident.tier, ident.experiment_id, ident.environment
    );
    FOREACH tbl IN ARRAY ARRAY['events', 'curated'] LOOP
        EXECUTE format(
            'ALTER TABLE envfence.%I ADD CONSTRAINT %I CHECK (%s)',
            tbl, tbl || '_belongs_to_environment', fence
        );
    END LOOP;
END;
$$;
