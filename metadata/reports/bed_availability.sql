-- description: >-
--   Beds by status per facility and unit, and the occupancy rate (occupied / all beds), as of each
--   facility's latest census. Rebuilt whenever silver.bed_census changes.
-- schedule: on_update
-- chart: {kind: bar, x: unit, y: occupancy_rate, group: facility_id}
-- checks:
--   - {rule: not_null, columns: [facility_id, unit, as_of]}
--   - {rule: unique, columns: [facility_id, unit]}
--   - {rule: range, column: occupancy_rate, min: 0, max: 1}
WITH beds AS (
    -- silver.bed_census is an upsert table: one current row per (facility_id, bed_id).
    SELECT facility_id, unit, status, updated_at FROM silver.bed_census WHERE NOT _deleted
),
latest AS (
    SELECT facility_id, max(updated_at) AS as_of FROM beds GROUP BY facility_id
)
SELECT
    beds.facility_id,
    beds.unit,
    count(*) AS beds,
    count(*) FILTER (WHERE status = 'occupied') AS occupied,
    count(*) FILTER (WHERE status = 'available') AS available,
    count(*) FILTER (WHERE status = 'cleaning') AS cleaning,
    count(*) FILTER (WHERE status = 'blocked') AS blocked,
    round(count(*) FILTER (WHERE status = 'occupied') / count(*), 4) AS occupancy_rate,
    latest.as_of
FROM beds JOIN latest USING (facility_id)
GROUP BY beds.facility_id, beds.unit, latest.as_of
ORDER BY beds.facility_id, beds.unit
