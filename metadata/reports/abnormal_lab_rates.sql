-- description: >-
--   Per facility and test, the share of final results (status F or C, corrected results being final
--   too) flagged abnormal: any abnormal flag other than N (normal); a result without a flag counts as
--   not abnormal.
-- schedule: weekly
-- checks:
--   - {rule: not_null, columns: [facility_id, test_code]}
--   - {rule: unique, columns: [facility_id, test_code]}
--   - {rule: range, column: abnormal_rate, min: 0, max: 1}
SELECT
    facility_id,
    test_code,
    max(test_name) AS test_name,
    count(*) AS final_results,
    count(*) FILTER (WHERE abnormal_flag IS NOT NULL AND abnormal_flag <> 'N') AS abnormal_results,
    round(count(*) FILTER (WHERE abnormal_flag IS NOT NULL AND abnormal_flag <> 'N') / count(*), 4)
        AS abnormal_rate
FROM silver.lab_results
WHERE NOT _deleted AND result_status IN ('F', 'C')
GROUP BY facility_id, test_code
ORDER BY facility_id, test_code
