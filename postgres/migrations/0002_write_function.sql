-- projector_write_projections: stores one org's projections in one call, fenced, like the Redis
-- sink's projection_write.lua. The whole write is refused when any row of its projects holds a
-- later run (first_hour), or the same run under a newer lease (fencing token; 0 = no lease, which
-- cannot be fenced). Writes of one org are serialized by a transaction-scoped advisory lock, so
-- the check and the upsert see the same rows. Rows of the org older than p_prune_before go.
-- Rows are given as parallel arrays (project, hour, events, threshold): one round trip per org.
-- Returns one row: written, the refusing row's first_hour and token (NULL, NULL when written),
-- and the number of rows upserted.
CREATE OR REPLACE FUNCTION projector_write_projections(
    p_org           bigint,
    p_run           text,
    p_first_hour    timestamptz,
    p_token         bigint,
    p_prune_before  timestamptz,
    p_projects      bigint[],
    p_hours         timestamptz[],
    p_events        bigint[],
    p_thresholds    bigint[]
) RETURNS TABLE (written boolean, stored_first_hour timestamptz, stored_token bigint, rows_written bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    newer record;
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('projector.spike_projections', p_org));
    SELECT s.first_hour, s.fencing_token INTO newer
      FROM spike_projections s
     WHERE s.org_id = p_org
       AND s.project_id = ANY (p_projects)
       AND (s.first_hour > p_first_hour
            OR (s.first_hour = p_first_hour AND p_token > 0 AND s.fencing_token > p_token))
     ORDER BY s.first_hour DESC, s.fencing_token DESC
     LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT false, newer.first_hour, newer.fencing_token, 0::bigint;
        RETURN;
    END IF;
    INSERT INTO spike_projections AS s
           (org_id, project_id, hour, events, spike_threshold, run_id, first_hour, fencing_token, written_at)
    SELECT p_org, r.project_id, r.hour, r.events, r.spike_threshold, p_run, p_first_hour, p_token, now()
      FROM unnest(p_projects, p_hours, p_events, p_thresholds) AS r(project_id, hour, events, spike_threshold)
    ON CONFLICT (org_id, project_id, hour) DO UPDATE
       SET events = EXCLUDED.events,
           spike_threshold = EXCLUDED.spike_threshold,
           run_id = EXCLUDED.run_id,
           first_hour = EXCLUDED.first_hour,
           fencing_token = EXCLUDED.fencing_token,
           written_at = EXCLUDED.written_at;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM spike_projections s WHERE s.org_id = p_org AND s.hour < p_prune_before;
    RETURN QUERY SELECT true, NULL::timestamptz, NULL::bigint, n;
END
$$;
