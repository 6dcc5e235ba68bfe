"""Drives a quorumd cluster with py-consul, a Consul client from PyPI,
exactly as an application would drive Consul's KV store.

usage: pyconsul_kv.py HOST:PORT HOST:PORT ...   (one admin address per node)
Prints OK and exits 0, or raises.
"""

import base64
import sys
import threading
import time

import consul
import consul.exceptions


def client(addr, **kw):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), **kw)


def main():
    addrs = sys.argv[1:]
    a, b, c = (client(x) for x in addrs[:3])

    # put / get, on different nodes
    assert a.kv.put("app/name", "quorumd") is True
    index, entry = b.kv.get("app/name")
    assert entry["Value"] == b"quorumd", entry
    assert entry["Key"] == "app/name"
    assert int(index) >= entry["ModifyIndex"] >= 1

    # flags
    assert a.kv.put("app/flagged", b"\x00\xff binary", flags=42) is True
    _, entry = c.kv.get("app/flagged")
    assert entry["Flags"] == 42 and entry["Value"] == b"\x00\xff binary", entry

    # cas
    _, entry = a.kv.get("app/name")
    assert b.kv.put("app/name", "stale", cas=entry["ModifyIndex"] - 1) is False
    assert b.kv.put("app/name", "v2", cas=entry["ModifyIndex"]) is True
    assert c.kv.put("app/new", "x", cas=0) is True
    assert c.kv.put("app/new", "y", cas=0) is False
    assert a.kv.get("app/name")[1]["Value"] == b"v2"

    # recurse, keys with a separator, a missing key
    for k in ("app/sub/1", "app/sub/2"):
        assert a.kv.put(k, "s") is True
    _, items = b.kv.get("app/", recurse=True)
    assert [i["Key"] for i in items] == [
        "app/flagged", "app/name", "app/new", "app/sub/1", "app/sub/2"], items
    _, keys = c.kv.get("app/", keys=True, separator="/")
    assert keys == ["app/flagged", "app/name", "app/new", "app/sub/"], keys
    index, missing = a.kv.get("no/such/key")
    assert missing is None and int(index) >= 1

    # consistency modes
    for mode in ("consistent", "stale"):
        _, entry = client(addrs[2], consistency=mode).kv.get("app/name")
        assert entry["Value"] == b"v2", (mode, entry)
    _, entry = c.kv.get("app/name", consistency="stale")
    assert entry["Value"] == b"v2"

    # a blocking query on one node returns when a write lands through another
    index, _ = c.kv.get("app/name")
    got = {}

    def watch():
        got["answer"] = c.kv.get("app/name", index=index, wait="20s")

    t = threading.Thread(target=watch)
    started = time.monotonic()
    t.start()
    time.sleep(0.3)
    assert a.kv.put("app/name", "v3") is True
    t.join(30)
    assert not t.is_alive(), "the blocking query did not return"
    new_index, entry = got["answer"]
    assert int(new_index) > int(index), (new_index, index)
    assert entry["Value"] == b"v3"
    assert time.monotonic() - started < 15

    # delete, delete with recurse
    assert a.kv.delete("app/new") is True
    assert b.kv.get("app/new")[1] is None
    assert b.kv.delete("app/sub/", recurse=True) is True
    _, keys = c.kv.get("app/", keys=True)
    assert keys == ["app/flagged", "app/name"], keys

    # transactions
    def op(verb, key, value=None, **kw):
        kv = {"Verb": verb, "Key": key, **kw}
        if value is not None:
            kv["Value"] = base64.b64encode(value).decode()
        return {"KV": kv}

    result = b.txn.put([op("set", "txn/a", b"1"), op("set", "txn/b", b"2"), op("get", "app/name")])
    assert result["Errors"] is None, result
    assert len(result["Results"]) == 3
    assert base64.b64decode(result["Results"][2]["KV"]["Value"]) == b"v3"
    assert a.kv.get("txn/b")[1]["Value"] == b"2"
    try:
        c.txn.put([op("set", "txn/c", b"3"), op("check-not-exists", "txn/a")])
        raise AssertionError("a failed check must roll the transaction back")
    except consul.exceptions.ClientError as e:
        assert "409" in str(e), e
    assert a.kv.get("txn/c")[1] is None

    print("OK")


if __name__ == "__main__":
    main()
