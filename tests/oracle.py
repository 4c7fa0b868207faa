#!/usr/bin/env python3
"""Independent digests for the test suite: hashlib, blake3 and crc32c from PyPI.

usage: oracle.py FILE ALG[,ALG...]   prints {"alg": "hex", ...}
"""
import hashlib
import json
import sys

import blake3
import crc32c


def main():
    path, algs = sys.argv[1], sys.argv[2].split(",")
    states = {}
    for a in algs:
        if a == "blake3":
            states[a] = blake3.blake3()
        elif a == "crc32c":
            states[a] = None
        else:
            states[a] = hashlib.new(a)
    crc = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            for a, s in states.items():
                if a == "crc32c":
                    crc = crc32c.crc32c(block, crc)
                else:
                    s.update(block)
    out = {}
    for a, s in states.items():
        out[a] = "%08x" % crc if a == "crc32c" else s.hexdigest()
    print(json.dumps(out))


main()
