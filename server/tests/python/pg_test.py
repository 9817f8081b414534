"""psycopg, the Python cassandra-driver and ADBC's Flight SQL driver against
one running `concord start`: a write through CQL is visible through the
Postgres endpoint and Flight SQL, and bad input gets its SQLSTATE / status.

Usage: pg_test.py HOST CQL_PORT PG_PORT [FLIGHT_PORT]

Each check prints one line "ok <name>"; the first failure raises, prints a
traceback and exits non-zero. Run by server/tests/it/pg_clients.rs.
"""

import sys
import time

import psycopg
from psycopg import errors
from cassandra.cluster import Cluster

HOST = sys.argv[1]
CQL_PORT, PG_PORT = int(sys.argv[2]), int(sys.argv[3])
FLIGHT_PORT = int(sys.argv[4]) if len(sys.argv) > 4 else None


def ok(name):
    print("ok", name, flush=True)


def expect_sqlstate(connection, sql, params, code):
    try:
        connection.execute(sql, params)
    except psycopg.Error as error:
        assert error.sqlstate == code, (sql, error.sqlstate, str(error))
        return str(error)
    raise AssertionError(f"{sql} did not fail")


cluster = Cluster([HOST], port=CQL_PORT, connect_timeout=10, control_connection_timeout=10)
cql = cluster.connect()
cql.execute(
    "CREATE KEYSPACE shop WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
)
cql.execute(
    "CREATE TABLE shop.orders (id int PRIMARY KEY, customer text, amount double, paid boolean)"
)
for i in range(1, 11):
    cql.execute(
        "INSERT INTO shop.orders (id, customer, amount, paid) VALUES (%s, %s, %s, %s)",
        (i, "ann" if i % 2 else "bob", float(i * 10), i % 3 == 0),
    )
ok("cql schema and rows")

pg = psycopg.connect(host=HOST, port=PG_PORT, user="concord", dbname="concord", autocommit=True)
other = psycopg.connect(host=HOST, port=PG_PORT, user="concord", dbname="concord", autocommit=True)

# Aggregates over the columnar replica see every CQL write made before.
row = pg.execute("SELECT count(*), sum(amount), min(id), max(id) FROM shop.orders").fetchone()
assert row == (10, 550.0, 1, 10), row
rows = pg.execute(
    "SELECT customer, count(*) AS n FROM shop.orders GROUP BY customer ORDER BY customer"
).fetchall()
assert rows == [("ann", 5), ("bob", 5)], rows
ok("aggregates")

# Parameterised SELECT (extended protocol; psycopg binds server-side).
row = pg.execute("SELECT customer, amount, paid FROM shop.orders WHERE id = %s", (3,)).fetchone()
assert row == ("ann", 30.0, True), row
rows = pg.execute(
    "SELECT id FROM shop.orders WHERE customer = %s AND amount > %s ORDER BY id", ("bob", 45.0)
).fetchall()
assert rows == [(6,), (8,), (10,)], rows
ok("parameterised select")

# Binary result format for the common types.
with pg.cursor(binary=True) as cursor:
    cursor.execute("SELECT id, customer, amount, paid FROM shop.orders WHERE id = %s", (4,))
    assert cursor.fetchone() == (4, "bob", 40.0, False)
ok("binary results")

# A write through CQL is visible at once: a point read (row store) and an
# aggregate (replica) both see it.
cql.execute("INSERT INTO shop.orders (id, customer, amount, paid) VALUES (100, 'cat', 1000.0, true)")
row = pg.execute("SELECT customer FROM shop.orders WHERE id = 100").fetchone()
assert row == ("cat",), row
row = pg.execute("SELECT count(*), sum(amount) FROM shop.orders").fetchone()
assert row == (11, 1550.0), row
ok("cql write visible through postgres")

# DML through the Postgres endpoint, visible through CQL.
cursor = pg.execute(
    "INSERT INTO shop.orders (id, customer, amount, paid) VALUES (%s, %s, %s, %s)",
    (200, "dan", 5.5, False),
)
assert cursor.rowcount == 1, cursor.rowcount
assert cql.execute("SELECT customer, amount FROM shop.orders WHERE id = 200").one() == ("dan", 5.5)
cursor = pg.execute("INSERT INTO shop.orders (id, customer) VALUES (201, 'eve'), (202, 'fay')")
assert cursor.rowcount == 2, cursor.rowcount
message = expect_sqlstate(
    pg, "INSERT INTO shop.orders (id, customer) VALUES (%s, %s)", (200, "dup"), "23505"
)
assert "duplicate key" in message, message
assert cql.execute("SELECT customer FROM shop.orders WHERE id = 200").one() == ("dan",)
cursor = pg.execute("UPDATE shop.orders SET amount = %s WHERE id = %s", (6.5, 200))
assert cursor.rowcount == 1, cursor.rowcount
cursor = pg.execute("UPDATE shop.orders SET amount = 1 WHERE id = 999")
assert cursor.rowcount == 0, cursor.rowcount
assert cql.execute("SELECT amount FROM shop.orders WHERE id = 999").one() is None
cursor = pg.execute("DELETE FROM shop.orders WHERE id = %s", (201,))
assert cursor.rowcount == 1, cursor.rowcount
assert cql.execute("SELECT id FROM shop.orders WHERE id = 201").one() is None
assert pg.execute("SELECT amount FROM shop.orders WHERE id = 200").fetchone() == (6.5,)
ok("insert update delete")

# Errors: SQLSTATEs, and the connection (and another one) keep working.
expect_sqlstate(pg, "SELECT * FROM shop.nope", None, "42P01")
expect_sqlstate(pg, "SELECT nope FROM shop.orders", None, "42703")
expect_sqlstate(pg, "SELEC 1", None, "42601")
expect_sqlstate(pg, "SELECT * FROM shop.orders WHERE id = %s", ("x",), "22P02")
expect_sqlstate(pg, "SELECT no_such_function(1)", None, "42883")
expect_sqlstate(pg, "INSERT INTO shop.orders (id, customer) VALUES ('x', 'y')", None, "22P02")
expect_sqlstate(pg, "INSERT INTO shop.nope (id) VALUES (1)", None, "42P01")
expect_sqlstate(pg, "UPDATE shop.orders SET amount = 1", None, "0A000")
expect_sqlstate(pg, "CREATE TABLE t (a int)", None, "0A000")
expect_sqlstate(pg, "SET concord.freshness = 'sometimes'", None, "22023")
assert pg.execute("SELECT 1").fetchone() == (1,)
assert other.execute("SELECT count(*) FROM shop.orders").fetchone() == (13,)
ok("errors have sqlstates and hurt no connection")

# Session settings: bounded staleness and the store choice.
pg.execute("SET concord.freshness = '2s'")
assert pg.execute("SHOW concord.freshness").fetchone() == ("2000ms",)
pg.execute("SET concord.store = 'row_store'")
assert pg.execute("SELECT count(*) FROM shop.orders").fetchone() == (13,)
plan = "\n".join(r[1] for r in pg.execute("EXPLAIN SELECT count(*) FROM shop.orders").fetchall())
assert "row_store" in plan, plan
pg.execute("SET concord.store = 'auto'")
pg.execute("SET concord.freshness = 'latest'")
ok("session settings")

# Introspection a BI tool does.
assert pg.execute("SELECT version()").fetchone()[0].startswith("PostgreSQL 15")
assert pg.execute("SELECT current_schema()").fetchone() is not None
names = [
    r[0]
    for r in pg.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'shop'"
    ).fetchall()
]
assert names == ["orders"], names
rows = pg.execute(
    "SELECT a.attname, t.typname FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_class c ON a.attrelid = c.oid "
    "JOIN pg_catalog.pg_namespace n ON c.relnamespace = n.oid "
    "JOIN pg_catalog.pg_type t ON a.atttypid = t.oid "
    "WHERE n.nspname = 'shop' AND c.relname = 'orders' AND a.attnum > 0 ORDER BY a.attnum"
).fetchall()
assert rows[:4] == [("id", "int4"), ("customer", "text"), ("amount", "float8"), ("paid", "bool")], rows
ok("catalog introspection")

# A transaction block: statements commit on their own; ROLLBACK warns.
with psycopg.connect(host=HOST, port=PG_PORT, user="concord", dbname="concord") as tx:
    tx.execute("INSERT INTO shop.orders (id, customer) VALUES (300, 'gus')")
    notices = []
    tx.add_notice_handler(lambda notice: notices.append(notice.message_primary))
    tx.rollback()
    assert any("cannot undo 1" in n for n in notices), notices
assert pg.execute("SELECT customer FROM shop.orders WHERE id = 300").fetchone() == ("gus",)
ok("transaction blocks")

if FLIGHT_PORT is not None:
    import adbc_driver_flightsql.dbapi as flight_sql
    import pyarrow

    cql.execute("INSERT INTO shop.orders (id, customer, amount, paid) VALUES (400, 'hal', 1.0, true)")
    with flight_sql.connect(f"grpc://{HOST}:{FLIGHT_PORT}") as flight:
        with flight.cursor() as cursor:
            cursor.execute("SELECT id, customer FROM shop.orders WHERE id >= 300 ORDER BY id")
            table = cursor.fetch_arrow_table()
            assert isinstance(table, pyarrow.Table)
            assert table.column("id").to_pylist() == [300, 400], table
            assert table.column("customer").to_pylist() == ["gus", "hal"], table
            cursor.execute("SELECT customer, sum(amount) AS total FROM shop.orders GROUP BY customer ORDER BY customer")
            totals = dict(zip(*[c.to_pylist() for c in cursor.fetch_arrow_table().columns]))
            assert totals["cat"] == 1000.0 and totals["hal"] == 1.0, totals
            try:
                cursor.execute("SELECT * FROM shop.nope")
                cursor.fetch_arrow_table()
                raise AssertionError("unknown table did not fail")
            except flight_sql.Error as error:
                assert "42P01" in str(error) and "NOT_FOUND" in str(error).upper().replace(" ", "_"), str(error)
            try:
                cursor.execute("SELEC 1")
                cursor.fetch_arrow_table()
                raise AssertionError("bad syntax did not fail")
            except flight_sql.Error as error:
                assert "42601" in str(error) and "INVALID_ARGUMENT" in str(error), str(error)
            # The driver prepares every statement: this is the prepared path.
            cursor.adbc_prepare("SELECT count(*) AS n FROM shop.orders")
            cursor.execute("SELECT count(*) AS n FROM shop.orders")
            assert cursor.fetch_arrow_table().column("n").to_pylist() == [15]
            cursor.execute("SELECT customer FROM shop.orders WHERE id = ?", parameters=(400,))
            assert cursor.fetch_arrow_table().column("customer").to_pylist() == ["hal"]
        assert flight.adbc_get_info()["vendor_name"] == "Concord"
        assert flight.adbc_get_table_types() == ["TABLE"]
        objects = flight.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = [
            (schema["db_schema_name"], table["table_name"])
            for catalog in objects
            for schema in catalog["catalog_db_schemas"] or []
            for table in schema["db_schema_tables"] or []
        ]
        assert ("shop", "orders") in tables, tables
        schema = flight.adbc_get_table_schema("orders", db_schema_filter="shop")
        assert schema.field("amount").type == pyarrow.float64(), schema
    ok("flight sql")

cluster.shutdown()
print("all pg checks passed", flush=True)
