# SPDX-License-Identifier: MIT
# cbor.py - a small CBOR encoder/decoder for the end-to-end tests, so that a
# test can submit CBOR with mosquitto_pub and read CBOR answers without a
# CBOR library on the machine. It covers what submissions and answers use:
# integers, floats, text and byte strings, arrays, maps, true/false/null,
# and (decoding only) tags and indefinite lengths.
#
#   python3 cbor.py enc JSON_TEXT      > file.cbor   JSON text -> CBOR bytes
#   python3 cbor.py dec  < file.cbor                 CBOR -> compact JSON
#   python3 cbor.py dechex HEX                       hex CBOR -> compact JSON
# Byte strings decode to {"$bytes": "<hex>"}. Malformed input exits 1.
import json
import struct
import sys


def _head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for ai, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | ai]) + struct.pack(fmt, n)
    raise ValueError("integer too large")


def encode(v):
    if v is True:
        return b"\xf5"
    if v is False:
        return b"\xf4"
    if v is None:
        return b"\xf6"
    if isinstance(v, int):
        return _head(0, v) if v >= 0 else _head(1, -1 - v)
    if isinstance(v, float):
        return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode("utf-8")
        return _head(3, len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        return _head(2, len(v)) + bytes(v)
    if isinstance(v, list):
        return _head(4, len(v)) + b"".join(encode(x) for x in v)
    if isinstance(v, dict):
        return _head(5, len(v)) + b"".join(encode(k) + encode(x) for k, x in v.items())
    raise TypeError(type(v))


class _Dec:
    def __init__(self, b):
        self.b, self.i = b, 0

    def take(self, n):
        if self.i + n > len(self.b):
            raise ValueError("truncated")
        s = self.b[self.i:self.i + n]
        self.i += n
        return s

    def arg(self, ai):
        if ai < 24:
            return ai
        if ai == 31:
            return None
        fmt = {24: ">B", 25: ">H", 26: ">I", 27: ">Q"}.get(ai)
        if fmt is None:
            raise ValueError("reserved additional info")
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def item(self):
        ib = self.take(1)[0]
        major, ai = ib >> 5, ib & 31
        if major == 7:
            if ai == 20:
                return False
            if ai == 21:
                return True
            if ai in (22, 23):
                return None
            if ai == 25:
                return struct.unpack(">e", self.take(2))[0]
            if ai == 26:
                return struct.unpack(">f", self.take(4))[0]
            if ai == 27:
                return struct.unpack(">d", self.take(8))[0]
            if ai == 31:
                return StopIteration
            raise ValueError("simple value")
        n = self.arg(ai)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 6:
            return self.item()
        if major in (2, 3):
            if n is None:
                parts = []
                while True:
                    x = self.item()
                    if x is StopIteration:
                        break
                    parts.append(x if major == 3 else bytes.fromhex(x["$bytes"]))
                return "".join(parts) if major == 3 else {"$bytes": b"".join(parts).hex()}
            s = self.take(n)
            return s.decode("utf-8") if major == 3 else {"$bytes": s.hex()}
        if major == 4:
            out = []
            while n is None or len(out) < n:
                x = self.item()
                if x is StopIteration:
                    break
                out.append(x)
            return out
        out = {}
        while n is None or len(out) < n:
            k = self.item()
            if k is StopIteration:
                break
            out[k if isinstance(k, str) else json.dumps(k)] = self.item()
        return out


def decode(b):
    d = _Dec(b)
    v = d.item()
    if d.i != len(b):
        raise ValueError("trailing bytes")
    return v


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        if cmd == "enc":
            sys.stdout.buffer.write(encode(json.loads(sys.argv[2])))
        elif cmd == "dec":
            print(json.dumps(decode(sys.stdin.buffer.read()), separators=(",", ":")))
        elif cmd == "dechex":
            print(json.dumps(decode(bytes.fromhex(sys.argv[2])), separators=(",", ":")))
        else:
            sys.exit("usage: cbor.py enc JSON | dec | dechex HEX")
    except (ValueError, UnicodeDecodeError, IndexError, struct.error) as e:
        print("cbor.py: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
