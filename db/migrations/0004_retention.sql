-- Retention for experiment databases: envfence.expire_experiment_rows(max_age) deletes the rows
-- older than max_age and returns how many it deleted.
--
-- Experiment data must expire: the S3 objects of an experiment stack expire after
-- `retention.expireAfterDays`, but nothing removed database rows, so the long-lived `experiment`
-- stack kept them for ever. db/retention.py calls this function on a schedule. Production data is
-- never deleted by envfence: on a database whose identity tier is 'production' the function
-- raises insufficient_privilege before touching anything.
--
-- One call is one transaction: the curated rows of expired events (and curated rows that are
-- themselves older than max_age) go first, then the events, so the foreign key holds and a
-- failure deletes nothing. max_age must be at least 1 day, so a slip (0, a negative value, NULL)
-- cannot empty the tables.
--
-- Only the owner (the migrating user, the RDS master) may run it: EXECUTE is revoked from PUBLIC,
-- so `worker`/`envfence_writer` and `analyst`/`envfence_analyst` cannot. It is SECURITY INVOKER:
-- the caller also needs DELETE on the tables, which those roles do not have either.

-- The daily job selects by age; without these it would read both tables in full. curated's
-- (event_id, key) unique index already serves the foreign key check when events are deleted.
CREATE INDEX events_received_at ON envfence.events (received_at);
CREATE INDEX curated_created_at ON envfence.curated (created_at);

CREATE FUNCTION envfence.expire_experiment_rows(max_age interval)
RETURNS TABLE (events_deleted bigint, curated_deleted bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ident envfence.environment_identity%ROWTYPE;
    cutoff timestamptz;
BEGIN
    SELECT * INTO ident FROM envfence.environment_identity;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'envfence: this database has no environment identity; run db/migrate.py'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF ident.tier IS DISTINCT FROM 'experiment' THEN
        RAISE EXCEPTION 'envfence: production rows are never expired by this job (database of '
                        'environment %, tier %)', ident.environment, ident.tier
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'only databases of the experiment tier have a retention period';
    END IF;
    IF max_age IS NULL OR max_age < interval '1 day' THEN
        RAISE EXCEPTION 'envfence: max_age must be at least 1 day, got %',
            coalesce(max_age::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    cutoff := now() - max_age;

    -- source = 'experiment' repeats what the provenance constraints already guarantee: even in a
    -- damaged database, a production row is not deleted here.
    DELETE FROM envfence.curated AS c
     WHERE c.source = 'experiment'
       AND (c.created_at < cutoff
            OR c.event_id IN (SELECT e.id FROM envfence.events AS e WHERE e.received_at < cutoff));
    GET DIAGNOSTICS curated_deleted = ROW_COUNT;

    DELETE FROM envfence.events AS e
     WHERE e.source = 'experiment'
       AND e.received_at < cutoff;
    GET DIAGNOSTICS events_deleted = ROW_COUNT;

    RETURN NEXT;
END;
$$;

REVOKE ALL ON FUNCTION envfence.expire_experiment_rows(interval) FROM PUBLIC;
