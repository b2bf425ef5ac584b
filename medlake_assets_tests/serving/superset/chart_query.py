"""Run by `.venv-superset/bin/python` (Superset's own environment): the query a Superset time-series chart
builds over a lake table (the PostgreSQL engine spec's day time grain, a count metric, a group-by), through
Superset's SQLAlchemy stack. Prints `rows`, `facilities` and `total` lines. Usage: chart_query.py <uri>."""

import sys

from superset.app import create_app

app = create_app()
with app.app_context():
    from sqlalchemy import create_engine, text
    from superset.db_engine_specs.postgres import PostgresEngineSpec

    grain = PostgresEngineSpec._time_grain_expressions["P1D"].replace("{col}", "result_ts")
    sql = (
        f"SELECT {grain} AS __timestamp, facility_id, count(*) AS count FROM silver.lab_results "
        "GROUP BY 1, 2 ORDER BY count DESC LIMIT 10000"
    )
    engine = create_engine(sys.argv[1])
    with engine.connect() as connection:
        rows = connection.execute(text(sql)).fetchall()
    print("rows", len(rows))
    print("facilities", ",".join(sorted({row[1] for row in rows})))
    print("total", sum(row[2] for row in rows))
