"""Reads one query's answer through psycopg (Postgres wire) and ADBC's
Flight SQL driver (pyarrow) from a running `concord start`, and prints it
as JSON, one line per client: {"client", "columns", "rows"}. The caller
(server/tests/it/pg_clients.rs) writes through CQL first and compares the
lines with what the Rust SDK and psql read.

Usage: read_everywhere.py HOST PG_PORT FLIGHT_PORT QUERY
"""

import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import psycopg

HOST, PG_PORT, FLIGHT_PORT, QUERY = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

with psycopg.connect(host=HOST, port=PG_PORT, user="concord", dbname="concord", autocommit=True) as pg:
    cursor = pg.execute(QUERY)
    columns = [column.name for column in cursor.description]
    rows = [list(row) for row in cursor.fetchall()]
    print(json.dumps({"client": "psycopg", "columns": columns, "rows": rows}), flush=True)

with flight_sql.connect(f"grpc://{HOST}:{FLIGHT_PORT}") as flight:
    with flight.cursor() as cursor:
        cursor.execute(QUERY)
        table = cursor.fetch_arrow_table()
        rows = [list(row.values()) for row in table.to_pylist()]
        print(json.dumps({"client": "flight_sql", "columns": table.column_names, "rows": rows}), flush=True)
