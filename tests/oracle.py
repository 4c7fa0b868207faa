#!/usr/bin/env python3
"""Independent digests for the test suite, from Python's standard library only
(hashlib, i.e. OpenSSL's implementations, not the RustCrypto crates the server
uses). CRC32C and BLAKE3 are not in hashlib: tests/integration/helpers.rs
computes those itself (see `oracle` there).

usage: oracle.py FILE ALG[,ALG...]   prints {"alg": "hex", ...}
"""
import hashlib
import json
import sys


def main():
    path, algs = sys.argv[1], sys.argv[2].split(",")
    # hashlib spells SHA3-256 "sha3_256"; the API says "sha3-256".
    states = {a: hashlib.new(a.replace("-", "_")) for a in algs}
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            for s in states.values():
                s.update(block)
    print(json.dumps({a: s.hexdigest() for a, s in states.items()}))


main()
