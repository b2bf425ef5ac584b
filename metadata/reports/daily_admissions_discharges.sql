-- description: >-
--   Per facility and day (UTC): admissions and discharges with the average length of stay (hours) of
--   the day's discharges, from silver.encounters; transfers are the day's A02 events in silver.adt_events
--   (an encounter keeps only its latest status, not each move).
-- schedule: daily
-- partitions: {cadence: daily, column: day}  # a run rebuilds its day(s); the schedule runs yesterday
-- partition_by: [month(day)]
-- chart: {kind: bar, x: day, y: admissions, group: facility}
-- checks:
--   - {rule: not_null, columns: [facility, day]}
--   - {rule: unique, columns: [facility, day]}
--   - {rule: range, column: avg_length_of_stay_hours, min: 0}
WITH encounters AS (
    SELECT facility, admit_ts, discharge_ts FROM silver.encounters WHERE NOT _deleted
),
admits AS (
    SELECT facility, admit_ts::DATE AS day, count(*) AS admissions
    FROM encounters WHERE admit_ts IS NOT NULL GROUP BY ALL
),
discharges AS (
    SELECT facility, discharge_ts::DATE AS day, count(*) AS discharges,
           round(avg(epoch(discharge_ts) - epoch(admit_ts)) / 3600, 2) AS avg_length_of_stay_hours
    FROM encounters WHERE discharge_ts IS NOT NULL GROUP BY ALL
),
transfers AS (
    -- An append table: a message received twice counts once.
    SELECT _facility AS facility, message_ts::DATE AS day, count(DISTINCT message_control_id) AS transfers
    FROM silver.adt_events WHERE trigger_event = 'A02' AND message_ts IS NOT NULL GROUP BY ALL
)
SELECT
    facility,
    day,
    coalesce(admissions, 0) AS admissions,
    coalesce(discharges, 0) AS discharges,
    coalesce(transfers, 0) AS transfers,
    avg_length_of_stay_hours
FROM admits
FULL JOIN discharges USING (facility, day)
FULL JOIN transfers USING (facility, day)
ORDER BY facility, day
