-- description: >-
--   Per facility and source: archives landed, loaded, quarantined and pending (meta.files), records
--   loaded, rows quarantined in total and by rule (quarantine.<source>, bronze parse and silver rule
--   failures), and the freshness lag: minutes from the last loaded archive to the report's run.
--   A new source needs its quarantine table added to the union below (a test checks the list).
-- schedule: nightly
-- checks:
--   - {rule: not_null, columns: [facility, source, archives]}
--   - {rule: unique, columns: [facility, source]}
--   - {rule: range, column: freshness_lag_minutes, min: 0}
WITH files AS (
    SELECT
        facility,
        source,
        count(*) AS archives,
        count(*) FILTER (WHERE status = 'loaded') AS archives_loaded,
        count(*) FILTER (WHERE status = 'quarantined') AS archives_quarantined,
        count(*) FILTER (WHERE status = 'pending') AS archives_pending,
        coalesce(sum(records) FILTER (WHERE status = 'loaded'), 0)::BIGINT AS records,
        max(timezone('UTC', loaded_at)) AS last_loaded_at
    FROM meta.files
    WHERE facility IS NOT NULL AND source IS NOT NULL
    GROUP BY facility, source
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
)
SELECT
    files.facility,
    files.source,
    files.archives,
    files.archives_loaded,
    files.archives_quarantined,
    files.archives_pending,
    files.records,
    coalesce(rules.quarantined_rows, 0) AS quarantined_rows,
    coalesce(rules.quarantined_by_rule, '{}') AS quarantined_by_rule,
    files.last_loaded_at,
    round(epoch(getvariable('as_of') - files.last_loaded_at) / 60, 1) AS freshness_lag_minutes,
    getvariable('as_of') AS as_of
FROM files LEFT JOIN rules USING (facility, source)
ORDER BY files.facility, files.source
