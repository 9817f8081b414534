"""The Python cassandra-driver against a running `concord start`.

Usage: driver_test.py HOST PORT

Each check prints one line "ok <name>"; the first failure raises, prints a
traceback and exits non-zero. Run by server/tests/it/cql_clients.rs.
"""

import datetime
import decimal
import ipaddress
import sys
import time
import uuid

from cassandra import AlreadyExists, InvalidRequest, ProtocolVersion
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.protocol import SyntaxException
from cassandra.query import BatchStatement, SimpleStatement, BatchType
from cassandra.util import Duration, Date, Time

HOST, PORT = sys.argv[1], int(sys.argv[2])


def ok(name):
    print("ok", name, flush=True)


def connect(**kwargs):
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy())
    )
    cluster = Cluster(
        [HOST],
        port=PORT,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=10,
        control_connection_timeout=10,
        **kwargs,
    )
    return cluster, cluster.connect()


def expect_error(error_type, function, *args):
    try:
        function(*args)
    except error_type as error:
        return str(error)
    raise AssertionError("expected %s" % error_type.__name__)


def negotiation():
    # The driver starts at DSE_V2 and steps down on "unsupported protocol version".
    cluster, session = connect()
    assert cluster.protocol_version == ProtocolVersion.V5, cluster.protocol_version
    row = session.execute("SELECT release_version FROM system.local WHERE key = 'local'").one()
    assert row.release_version.startswith("5."), row
    cluster.shutdown()
    cluster, session = connect(protocol_version=4)
    assert session.execute("SELECT key FROM system.local").one().key == "local"
    cluster.shutdown()
    ok("protocol negotiation v5 and v4")


def schema(session, cluster):
    session.execute("DROP KEYSPACE IF EXISTS drv")
    session.execute(
        "CREATE KEYSPACE drv WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    message = expect_error(
        AlreadyExists,
        session.execute,
        "CREATE KEYSPACE drv WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
    )
    assert "drv" in message, message
    session.execute("USE drv")
    session.execute("CREATE TYPE address (street text, zip int)")
    session.execute(
        """CREATE TABLE everything (
            id int PRIMARY KEY,
            a ascii, b bigint, bl blob, bo boolean, d date, de decimal, db double,
            du duration, f float, i inet, n int, sm smallint, t text, ti time,
            ts timestamp, tu timeuuid, tiny tinyint, u uuid, vi varint,
            l list<int>, s set<text>, m map<text, int>, tup tuple<int, text>,
            addr frozen<address>, fl frozen<list<frozen<set<int>>>>)"""
    )
    session.execute(
        "CREATE TABLE events (user_id int, at int, kind text, PRIMARY KEY (user_id, at))"
        " WITH CLUSTERING ORDER BY (at DESC)"
    )
    session.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint, owner text)")
    # Schema-change events refresh the driver's metadata.
    deadline = time.time() + 10
    while time.time() < deadline:
        tables = cluster.metadata.keyspaces.get("drv")
        if tables and "accounts" in tables.tables:
            break
        time.sleep(0.1)
    keyspace = cluster.metadata.keyspaces["drv"]
    assert "everything" in keyspace.tables and "accounts" in keyspace.tables
    assert [c.name for c in keyspace.tables["events"].clustering_key] == ["at"]
    assert "address" in keyspace.user_types
    ok("schema, AlreadyExists, USE, metadata refresh")


def every_type(session, cluster):
    prepared = session.prepare(
        "INSERT INTO everything (id, a, b, bl, bo, d, de, db, du, f, i, n, sm, t, ti, ts, tu,"
        " tiny, u, vi, l, s, m, tup, addr, fl) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
        " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    values = dict(
        id=1,
        a="ascii",
        b=-(2**62),
        bl=b"\x00\xffblob",
        bo=True,
        d=Date(datetime.date(2024, 2, 29)),
        de=decimal.Decimal("-12345.678900"),
        db=3.5,
        du=Duration(1, 2, 3000000000),
        f=1.5,
        i=ipaddress.ip_address("2001:db8::1"),
        n=-7,
        sm=-300,
        t="text ✓",
        ti=Time(datetime.time(13, 14, 15, 123456)),
        ts=datetime.datetime(2024, 1, 2, 3, 4, 5, 678000),
        tu=uuid.uuid1(),
        tiny=-8,
        u=uuid.uuid4(),
        vi=2**100,
        l=[3, 1, 2],
        s={"b", "a"},
        m={"x": 1, "y": 2},
        tup=(7, "seven"),
        addr=("Main", 12345),
        fl=[{1, 2}, {3}],
    )
    order = [c.strip() for c in "id, a, b, bl, bo, d, de, db, du, f, i, n, sm, t, ti, ts, tu, tiny, u, vi, l, s, m, tup, addr, fl".split(",")]
    session.execute(prepared, [values[name] for name in order])
    row = session.execute("SELECT * FROM everything WHERE id = 1").one()
    for name in order:
        got = getattr(row, name)
        want = values[name]
        if name == "i":
            got = ipaddress.ip_address(got)
        if name == "s":
            got = set(got)
        if name == "m":
            got = dict(got)
        if name == "l":
            got = list(got)
        if name == "addr":
            got = (got.street, got.zip)
        if name == "fl":
            got = [set(x) for x in got]
        assert got == want, (name, got, want)
    nulls = session.execute("INSERT INTO everything (id) VALUES (2)")
    row = session.execute("SELECT t, l, addr FROM everything WHERE id = 2").one()
    assert row.t is None and row.l is None and row.addr is None, row
    # Literals in CQL text type the same way.
    session.execute(
        "INSERT INTO everything (id, ts, d, ti, de, vi, du, i, u, bl) VALUES (3, '2024-01-02 03:04:05.678+0000',"
        " '2024-02-29', '13:14:15.123456', -12345.678900, 1267650600228229401496703205376, 1d2h,"
        " '2001:db8::1', 123e4567-e89b-42d3-a456-426614174000, 0xCAFE)"
    )
    row = session.execute("SELECT ts, d, de, vi, du, bl FROM everything WHERE id = 3").one()
    assert row.ts == values["ts"], row.ts
    assert row.de == values["de"] and row.vi == 2**100, row
    assert row.du == Duration(0, 1, 2 * 3600 * 10**9), row.du
    assert row.bl == b"\xca\xfe"
    ok("every CQL type round trip (prepared and literal)")


def prepared_and_paging(session):
    insert = session.prepare("INSERT INTO events (user_id, at, kind) VALUES (?, ?, ?)")
    assert insert.routing_key_indexes == [0], insert.routing_key_indexes
    for start in range(0, 10000, 500):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for at in range(start, start + 500):
            batch.add(insert, (1, at, "view"))
        session.execute(batch)
    statement = SimpleStatement("SELECT at FROM events WHERE user_id = 1", fetch_size=1000)
    result = session.execute(statement)
    ats = [row.at for row in result]
    assert ats == list(range(9999, -1, -1)), (len(ats), ats[:3])
    # A scan across partitions pages with the scan cursor.
    for user in range(2, 302):
        session.execute(insert, (user, 1, "click"))
    statement = SimpleStatement("SELECT user_id, at FROM events", fetch_size=37)
    rows = list(session.execute(statement))
    assert len(rows) == 10300, len(rows)
    # A paging state can be handed back explicitly.
    select = session.prepare("SELECT at FROM events WHERE user_id = ?")
    select.fetch_size = 10
    first = session.execute(select, (1,))
    assert len(first.current_rows) == 10 and first.paging_state
    second = session.execute(select, (1,), paging_state=first.paging_state)
    assert second.current_rows[0].at == 9989, second.current_rows[0]
    count = session.execute("SELECT count(*) FROM events WHERE user_id = 1").one()[0]
    assert count == 10000, count
    ok("prepared statements, 10,000-row paging, scans, explicit paging state")


def lwt_and_batches(session):
    result = session.execute("INSERT INTO accounts (id, balance, owner) VALUES (1, 100, 'ann') IF NOT EXISTS")
    assert result.was_applied
    result = session.execute("INSERT INTO accounts (id, balance, owner) VALUES (1, 5, 'bob') IF NOT EXISTS")
    assert not result.was_applied and result.one().owner == "ann", result.one()
    result = session.execute("UPDATE accounts SET balance = 90 WHERE id = 1 IF balance = 100")
    assert result.was_applied
    result = session.execute("UPDATE accounts SET balance = 80 WHERE id = 1 IF balance = 100")
    assert not result.was_applied and result.one().balance == 90, result.one()
    result = session.execute("DELETE FROM accounts WHERE id = 7 IF EXISTS")
    assert not result.was_applied
    batch = BatchStatement()
    batch.add(SimpleStatement("INSERT INTO accounts (id, balance, owner) VALUES (%s, %s, %s)"), (2, 10, "cy"))
    batch.add(SimpleStatement("UPDATE accounts SET balance = %s WHERE id = %s"), (20, 3))
    session.execute(batch)
    rows = {row.id: row.balance for row in session.execute("SELECT id, balance FROM accounts")}
    assert rows == {1: 90, 2: 10, 3: 20}, rows
    row = session.execute("SELECT JSON id, owner FROM accounts WHERE id = 1").one()
    assert row[0] == '{"id": 1, "owner": "ann"}', row
    ok("LWT [applied] and batches")


def transaction(session):
    block = (
        "BEGIN TRANSACTION "
        "LET a = (SELECT balance FROM accounts WHERE id = 1); "
        "SELECT a.balance; "
        "IF a.balance >= 50 THEN "
        "  INSERT INTO accounts (id, balance, owner) VALUES (4, 50, 'dee'); "
        "END IF "
        "COMMIT TRANSACTION"
    )
    row = session.execute(block).one()
    assert row[0] == 90, row
    assert session.execute("SELECT owner FROM accounts WHERE id = 4").one().owner == "dee"
    transfer = session.prepare(
        "BEGIN TRANSACTION "
        "  LET sender = (SELECT balance FROM accounts WHERE id = ?); "
        "  IF sender.balance >= ? THEN "
        "    UPDATE accounts SET balance = balance - ? WHERE id = ?; "
        "    UPDATE accounts SET balance = balance + ? WHERE id = ?; "
        "  END IF "
        "COMMIT TRANSACTION"
    )
    assert session.execute(transfer, (1, 30, 30, 1, 30, 2)).one()[0] is True
    assert session.execute(transfer, (1, 1000, 1000, 1, 1000, 2)).one()[0] is False
    balances = {row.id: row.balance for row in session.execute("SELECT id, balance FROM accounts WHERE id IN (1, 2)")}
    assert balances == {1: 60, 2: 40}, balances
    message = expect_error(InvalidRequest, session.execute, "UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    assert "BEGIN TRANSACTION" in message, message
    ok("BEGIN TRANSACTION with LET, SELECT, IF, prepared transfer with arithmetic")


def selects(session):
    rows = list(session.execute("SELECT user_id, at FROM events WHERE user_id IN (2, 3) AND at >= 1"))
    assert sorted((r.user_id, r.at) for r in rows) == [(2, 1), (3, 1)], rows
    rows = list(session.execute("SELECT at FROM events WHERE user_id = 1 AND at > 9990 ORDER BY at ASC"))
    assert [r.at for r in rows] == list(range(9991, 10000)), rows
    row = session.execute("SELECT max(at), min(at), sum(at), avg(at) FROM events WHERE user_id = 1").one()
    assert tuple(row) == (9999, 0, 49995000, 4999), row
    rows = list(session.execute("SELECT DISTINCT user_id FROM events"))
    assert len(rows) == 301, len(rows)
    rows = list(session.execute("SELECT user_id, count(*) FROM events WHERE user_id IN (1, 2) GROUP BY user_id"))
    assert sorted(tuple(r) for r in rows) == [(1, 10000), (2, 1)], rows
    rows = list(session.execute("SELECT user_id FROM events WHERE kind = 'click' LIMIT 5 ALLOW FILTERING"))
    assert len(rows) == 5, rows
    message = expect_error(InvalidRequest, session.execute, "SELECT * FROM events WHERE kind = 'click'")
    assert "ALLOW FILTERING" in message, message
    ok("selects: IN, ranges, ORDER BY, aggregates, DISTINCT, GROUP BY, filtering, JSON")


def errors(session):
    message = expect_error(SyntaxException, session.execute, "SELEC * FROM accounts")
    assert "line 1:1" in message, message
    message = expect_error(InvalidRequest, session.execute, "SELECT nope FROM accounts")
    assert "nope" in message, message
    message = expect_error(
        InvalidRequest, session.execute, "INSERT INTO accounts (id) VALUES (9) USING TIMESTAMP 1"
    )
    assert "USING TIMESTAMP" in message, message
    ok("errors: syntax with position, invalid, USING TIMESTAMP refused")


def routing(cluster, session):
    token_map = cluster.metadata.token_map
    assert token_map is not None and len(token_map.ring) == 16, token_map
    prepared = session.prepare("SELECT * FROM accounts WHERE id = ?")
    bound = prepared.bind((1,))
    assert bound.routing_key is not None
    replicas = cluster.metadata.get_replicas("drv", bound.routing_key)
    assert len(replicas) == 1, replicas
    ok("token-aware routing metadata")


def main():
    negotiation()
    cluster, session = connect()
    schema(session, cluster)
    every_type(session, cluster)
    prepared_and_paging(session)
    lwt_and_batches(session)
    transaction(session)
    selects(session)
    errors(session)
    routing(cluster, session)
    cluster.shutdown()
    print("all driver checks passed")


if __name__ == "__main__":
    main()
