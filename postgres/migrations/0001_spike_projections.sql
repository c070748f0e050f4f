-- One row per (org, project, projected hour), stamped with the run and slot lease that wrote it.
CREATE TABLE IF NOT EXISTS spike_projections (
    org_id          bigint      NOT NULL,
    project_id      bigint      NOT NULL,
    hour            timestamptz NOT NULL,
    events          bigint      NOT NULL,
    spike_threshold bigint      NOT NULL,
    -- The write that stored this row: its run, the run's first projected hour (which orders runs)
    -- and the slot lease's fencing token (0 = the legacy path, which holds no lease).
    run_id          text        NOT NULL,
    first_hour      timestamptz NOT NULL,
    fencing_token   bigint      NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, project_id, hour)
);
