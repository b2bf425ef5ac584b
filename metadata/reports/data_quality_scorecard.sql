-- description: >-
--   Per facility and source, what `medlake status` shows per source: archives landed, loaded, quarantined,
--   pending (not yet in a batch), loading (in a batch still loading) and loaded but not yet taken into
--   silver (meta.files, meta.processed); records loaded; rows quarantined in total and by rule
--   (quarantine.<source>: bronze parse and silver rule failures); rows held back by the silver quality gate
--   (meta.held: passing rows waiting, their batches, since when); the rule and time of the last quarantined
--   archive; freshness: minutes from the last loaded archive to the report's run, and from meta.freshness
--   the facility's usual interval between deliveries, its limit and whether it is stale.
--   A new source needs its quarantine table added to the union below (a test checks the list).
-- schedule: nightly
-- checks:
--   - {rule: not_null, columns: [facility, source, archives]}
--   - {rule: unique, columns: [facility, source]}
--   - {rule: range, column: freshness_lag_minutes, min: 0}
WITH files AS (
    SELECT
        f.facility,
        f.source,
        count(*) AS archives,
        count(*) FILTER (WHERE f.status = 'loaded') AS archives_loaded,
        count(*) FILTER (WHERE f.status = 'quarantined') AS archives_quarantined,
        count(*) FILTER (WHERE f.status = 'pending' AND f.batch_id IS NULL) AS archives_pending,
        count(*) FILTER (WHERE f.status = 'pending' AND f.batch_id IS NOT NULL) AS archives_loading,
        count(*) FILTER (WHERE f.status = 'loaded' AND p.batch_id IS NULL) AS archives_awaiting_silver,
        coalesce(sum(f.records) FILTER (WHERE f.status = 'loaded'), 0)::BIGINT AS records,
        -- epoch() reads a SQLite ledger's naive UTC times and PostgreSQL's timestamptz alike.
        to_timestamp(max(epoch(f.loaded_at))) AS last_loaded_at
    FROM meta.files AS f
    LEFT JOIN meta.processed AS p ON p.batch_id = f.batch_id AND p.consumer = 'silver.' || f.source
    WHERE f.facility IS NOT NULL AND f.source IS NOT NULL
    GROUP BY f.facility, f.source
),
last_error AS (
    SELECT facility, source, rule AS last_error_rule, to_timestamp(epoch(updated_at)) AS last_error_at
    FROM (
        SELECT
            facility,
            source,
            rule,
            updated_at,
            row_number() OVER (PARTITION BY facility, source ORDER BY updated_at DESC, rule) AS latest
        FROM meta.files
        WHERE status = 'quarantined' AND facility IS NOT NULL AND source IS NOT NULL
    ) AS quarantined_files
    WHERE latest = 1
),
quarantined AS (
    SELECT 'adt_events' AS source, _facility AS facility, rule FROM quarantine.adt_events
    UNION ALL SELECT 'bed_census', _facility, rule FROM quarantine.bed_census
    UNION ALL SELECT 'lab_results', _facility, rule FROM quarantine.lab_results
    UNION ALL SELECT 'patient_documents', _facility, rule FROM quarantine.patient_documents
),
by_rule AS (
    SELECT facility, source, rule, count(*) AS rows FROM quarantined GROUP BY ALL
),
rules AS (
    SELECT
        facility,
        source,
        sum(rows)::BIGINT AS quarantined_rows,
        -- JSON text so every BI tool can read it; keys sorted so equal counts give equal text.
        to_json(map(list(rule ORDER BY rule), list(rows ORDER BY rule)))::VARCHAR AS quarantined_by_rule
    FROM by_rule
    GROUP BY facility, source
),
held AS (
    SELECT
        facility,
        source,
        sum(rows - rejected)::BIGINT AS held_rows,
        count(*) AS held_batches,
        to_timestamp(min(epoch(held_at))) AS held_since
    FROM meta.held
    WHERE status IN ('held', 'released')
    GROUP BY facility, source
)
SELECT
    files.facility,
    files.source,
    files.archives,
    files.archives_loaded,
    files.archives_quarantined,
    files.archives_pending,
    files.archives_loading,
    files.archives_awaiting_silver,
    files.records,
    coalesce(rules.quarantined_rows, 0) AS quarantined_rows,
    coalesce(rules.quarantined_by_rule, '{}') AS quarantined_by_rule,
    coalesce(held.held_rows, 0) AS held_rows,
    coalesce(held.held_batches, 0) AS held_batches,
    held.held_since,
    last_error.last_error_rule,
    last_error.last_error_at,
    files.last_loaded_at,
    round(epoch(getvariable('as_of') - files.last_loaded_at) / 60, 1) AS freshness_lag_minutes,
    freshness.usual_interval_minutes,
    freshness.limit_minutes AS freshness_limit_minutes,
    freshness.stale,
    getvariable('as_of') AS as_of
FROM files
LEFT JOIN rules USING (facility, source)
LEFT JOIN held USING (facility, source)
LEFT JOIN last_error USING (facility, source)
LEFT JOIN meta.freshness AS freshness USING (facility, source)
ORDER BY files.facility, files.source
