#!/usr/bin/env python3
"""Generates storage/tests/data/murmur3_vectors.txt: partition keys and their Murmur3 tokens.

The tokens come from the DataStax Python driver (cassandra-driver), an implementation of
Cassandra's Murmur3Partitioner that shares no code with Concord's: the driver routes requests
to replicas with it, so its answers are the ones token-aware clients rely on. Every token is
computed twice, by the driver's C extension (`cassandra.cmurmur3`) and by its pure-Python
fallback (`cassandra.murmur3`), and the script stops if the two disagree.

Composite keys are serialized by the driver itself (`Statement.routing_key = [parts]`, the
CompositeType layout), and single values by the driver's own CQL type serializers.

Usage (Python 3.9+):

    python3 -m venv /tmp/cqlvenv && /tmp/cqlvenv/bin/pip install cassandra-driver==3.30.1
    /tmp/cqlvenv/bin/python storage/tests/gen_murmur3_vectors.py \
        > storage/tests/data/murmur3_vectors.txt

Output: `#` comment lines, then one `<key as lowercase hex> <token>` line per key; the empty key
is written as `-`. The token is the driver's `Murmur3Token.hash_fn(key)`: h1 of
murmur3_x64_128(key, seed 0), with i64::MIN mapped to i64::MAX. (Cassandra itself gives the
empty key the minimum token; the Rust test checks that rule separately.)
"""

import random
import sys
import uuid

import cassandra
from cassandra import cqltypes
from cassandra.cmurmur3 import murmur3 as murmur3_c
from cassandra.metadata import Murmur3Token
from cassandra.murmur3 import murmur3 as murmur3_python
from cassandra.query import SimpleStatement

PROTOCOL_VERSION = 4
SEED = 20240611


def token_of(key: bytes) -> int:
    token_driver = Murmur3Token.hash_fn(key)
    hash_c = murmur3_c(key)
    hash_python = murmur3_python(key)
    if hash_c != hash_python:
        sys.exit(f"C and pure-Python murmur3 disagree on {key.hex()}: {hash_c} != {hash_python}")
    normalized = hash_python if hash_python != -(2**63) else 2**63 - 1
    if normalized != token_driver:
        sys.exit(f"hash_fn and murmur3 disagree on {key.hex()}")
    return token_driver


def composite(parts) -> bytes:
    statement = SimpleStatement("SELECT 1")
    statement.routing_key = list(parts)
    return statement.routing_key


def serialized_single_values(rng: random.Random):
    ints = [0, 1, -1, 2, 42, 127, 128, 255, 256, 2**31 - 1, -(2**31)]
    ints += [rng.randint(-(2**31), 2**31 - 1) for _ in range(40)]
    for value in ints:
        yield f"int {value}", cqltypes.Int32Type.serialize(value, PROTOCOL_VERSION)
    bigints = [0, 1, -1, 2**63 - 1, -(2**63)]
    bigints += [rng.randint(-(2**63), 2**63 - 1) for _ in range(40)]
    for value in bigints:
        yield f"bigint {value}", cqltypes.LongType.serialize(value, PROTOCOL_VERSION)
    texts = ["", "a", "hello", "Concord", "héllo wörld", "日本語のテキスト", "x" * 15, "y" * 16,
             "z" * 17, "\u0000nul", "emoji 🦀"]
    texts += ["".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(1, 40)))
              for _ in range(30)]
    for value in texts:
        yield f"text {value!r}", cqltypes.UTF8Type.serialize(value, PROTOCOL_VERSION)
    uuids = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
    uuids += [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(25)]
    uuids += [uuid.UUID(int=rng.getrandbits(128), version=1) for _ in range(15)]
    for value in uuids:
        yield f"uuid {value}", cqltypes.UUIDType.serialize(value, PROTOCOL_VERSION)


def composite_keys(rng: random.Random):
    for _ in range(60):
        n_parts = rng.randint(2, 4)
        parts, labels = [], []
        for _ in range(n_parts):
            kind = rng.choice(["int", "bigint", "text", "uuid", "blob"])
            if kind == "int":
                value = rng.randint(-(2**31), 2**31 - 1)
                parts.append(cqltypes.Int32Type.serialize(value, PROTOCOL_VERSION))
            elif kind == "bigint":
                value = rng.randint(-(2**63), 2**63 - 1)
                parts.append(cqltypes.LongType.serialize(value, PROTOCOL_VERSION))
            elif kind == "text":
                value = "".join(chr(rng.randint(32, 0x17F)) for _ in range(rng.randint(0, 20)))
                parts.append(cqltypes.UTF8Type.serialize(value, PROTOCOL_VERSION))
            elif kind == "uuid":
                value = uuid.UUID(int=rng.getrandbits(128), version=4)
                parts.append(cqltypes.UUIDType.serialize(value, PROTOCOL_VERSION))
            else:
                value = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
                parts.append(value)
            labels.append(kind)
        yield f"composite {'+'.join(labels)}", composite(parts)


def random_keys(rng: random.Random):
    # Every length 0..=64 covers every tail length (0..=15) with 0..4 full blocks. Bytes are
    # drawn both from the full range (high bits set exercise the sign-extension of tail bytes
    # that Cassandra's implementation has) and from 0x80..0xff only.
    for length in range(0, 65):
        for _ in range(5):
            yield f"random {length}", bytes(rng.getrandbits(8) for _ in range(length))
        yield f"random high {length}", bytes(rng.randint(0x80, 0xFF) for _ in range(length))
    for length in [100, 127, 128, 255, 256, 1000]:
        yield f"random {length}", bytes(rng.getrandbits(8) for _ in range(length))


def main():
    rng = random.Random(SEED)
    print(f"# Murmur3Partitioner tokens from cassandra-driver {cassandra.__version__}")
    print("# (C extension and pure-Python murmur3 agree on every line).")
    print("# Generated by storage/tests/gen_murmur3_vectors.py; format: <key hex | -> <token>")
    seen = set()
    for generator in (random_keys, serialized_single_values, composite_keys):
        for label, key in generator(rng):
            if key in seen:
                continue
            seen.add(key)
            print(f"# {label}")
            print(f"{key.hex() or '-'} {token_of(key)}")


if __name__ == "__main__":
    main()
