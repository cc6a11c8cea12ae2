#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): valid
messages of each kind, laid out as each target reads its input. Rerun after a wire
format change; the files are checked in."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# store_protocol: token length, token, piece size (0: all at once), then the stream.
STORE_HELLO_MAGIC = 0x54534C43
SET, GET, ADD = 1, 2, 3


def store_hello(token):
    return struct.pack("<II", STORE_HELLO_MAGIC, len(token)) + token


def store_request(cmd, key, arg, value=b""):
    return struct.pack("<BI", cmd, len(key)) + key + struct.pack("<Q", arg) + value


def store_input(token, stream, piece=0):
    return bytes([len(token)]) + token + bytes([piece]) + stream


TOKEN = b"job-secret"
ENDPOINT = b"127.0.0.1:40123"
store = {
    "hello": store_input(TOKEN, store_hello(TOKEN)),
    "hello-empty-token": store_input(b"", store_hello(b"")),
    "hello-wrong-token": store_input(TOKEN, store_hello(b"job-secreT")),
    "set": store_input(TOKEN, store_hello(TOKEN) + store_request(SET, b"collx/tcp/0", len(ENDPOINT), ENDPOINT)),
    "get": store_input(TOKEN, store_hello(TOKEN) + store_request(GET, b"collx/tcp/nonce", 300000)),
    "add": store_input(TOKEN, store_hello(TOKEN) + store_request(ADD, b"b/arrived", 1)
                       + store_request(ADD, b"b/arrived", (1 << 64) - 3)),
    "add-not-a-number": store_input(TOKEN, store_hello(TOKEN) + store_request(SET, b"k", 1, b"x")
                                    + store_request(ADD, b"k", 1)),
    "session-in-pieces-of-7": store_input(
        b"", store_hello(b"") + store_request(SET, b"k", 2, b"42") + store_request(ADD, b"k", 1)
        + store_request(GET, b"k", 10), piece=7),
}

# tcp_frames: config byte, hello, the expected header, then frames.
TCP_MAGIC = 0x78636F6C
TCP_HELLO_MAGIC = 0x6F6C6C68
NONCE = 0x0123456789ABCDEF


def tcp_hello(rank, stream):
    return struct.pack("<IiiIQ", TCP_HELLO_MAGIC, rank, stream, 0, NONCE)


# magic, kind, the envelope's wire form (seq, count, segment, tag, root, coll, type, op,
# algo, spare), size
def tcp_header(seq, count, size, kind=0, segment=0, tag=0, root=0, coll=0, dtype=6, op=0, algo=1):
    return struct.pack("<IIQQQiIBBBBIQ", TCP_MAGIC, kind, seq, count, segment, tag, root, coll, dtype, op, algo,
                       0, size)


# rank 0 of 2, 2 streams: bits 2-3 give size-rank-1, bits 4-5 streams-1.
CFG = bytes([0b0001_0100])
want = tcp_header(7, 64, 256)
reason = b"rank 1: out of memory"
tcp = {
    "hello": CFG + tcp_hello(1, 1),
    "two-messages": CFG + tcp_hello(1, 0) + want + tcp_header(7, 64, 256) + bytes(256) + tcp_header(8, 64, 256)
    + bytes(256),
    "abort": CFG + tcp_hello(1, 0) + want + tcp_header(0, 0, len(reason), kind=1) + reason,
    "mismatch": CFG + tcp_hello(1, 0) + want + tcp_header(7, 65, 260),
    "out-of-order": CFG + tcp_hello(1, 0) + want + tcp_header(8, 64, 256),
}

for target, files in (("store_protocol", store), ("tcp_frames", tcp)):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
