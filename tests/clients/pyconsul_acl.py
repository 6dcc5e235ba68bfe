"""Drives a quorumd cluster with [acl] enabled (default_policy = "deny")
through py-consul, a Consul client from PyPI, presenting tokens with its
own `token=` argument, exactly as an application would against Consul.

usage: pyconsul_acl.py HOST:PORT HOST:PORT ...   (one admin address per node)
Prints OK and exits 0, or raises.
"""

import sys

import consul
import consul.exceptions


def client(addr, **kw):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), **kw)


def refused(call):
    try:
        call()
    except consul.exceptions.ACLPermissionDenied:
        return True
    return False


def main():
    addrs = sys.argv[1:]
    a, b, c = (client(x) for x in addrs[:3])

    root = a.acl.bootstrap()["SecretID"]
    assert refused(lambda: b.acl.bootstrap()), "a second bootstrap is refused"
    assert refused(lambda: b.kv.put("devices/a/t", "1")), "no token, default deny"

    admin = client(addrs[1], token=root)
    gw_policy = admin.acl.policy.create(
        "gateway-a", rules={"key_prefix": {"devices/a/": {"policy": "write"}}}
    )
    assert gw_policy["Name"] == "gateway-a", gw_policy
    admin.acl.policy.create("read-all", rules={"key_prefix": {"": {"policy": "read"}}})
    names = sorted(p["Name"] for p in admin.acl.policy.list())
    assert names == ["gateway-a", "global-management", "read-all"], names
    gw = admin.acl.token.create(policies_name=["gateway-a"], description="site A")
    ro = admin.acl.token.create(policies_name=["read-all"])

    # The gateway's client presents its token with every call.
    gwc = client(addrs[2], token=gw["SecretID"])
    assert gwc.kv.put("devices/a/t1", "21.5") is True
    assert refused(lambda: gwc.kv.put("devices/b/t1", "1"))
    assert refused(lambda: gwc.kv.put("config/mode", "x"))
    # ... or per call, with token=.
    assert c.kv.put("devices/a/t2", "22", token=gw["SecretID"]) is True
    assert refused(lambda: c.kv.put("config/mode", "x", token=ro["SecretID"]))
    assert admin.kv.put("devices/b/secret", "s") is True

    # A recurse listing hides what the token may not read.
    _, entries = gwc.kv.get("devices/", recurse=True)
    assert [e["Key"] for e in entries] == ["devices/a/t1", "devices/a/t2"], entries
    _, entries = c.kv.get("devices/", recurse=True, token=ro["SecretID"])
    assert len(entries) == 3, entries

    # A txn with one forbidden op fails as a whole.
    ops = [
        {"KV": {"Verb": "set", "Key": "devices/a/t3", "Value": "MQ=="}},
        {"KV": {"Verb": "set", "Key": "devices/b/t3", "Value": "MQ=="}},
    ]
    assert refused(lambda: gwc.txn.put(ops))
    _, entry = admin.kv.get("devices/a/t3")
    assert entry is None, entry

    me = gwc.acl.token.read_self()
    assert me["AccessorID"] == gw["AccessorID"], me

    # Revoked: refused at once, on every node.
    assert admin.acl.token.delete(gw["AccessorID"]) is True
    for addr in addrs:
        node = client(addr, token=gw["SecretID"])
        assert refused(lambda: node.kv.put("devices/a/t1", "x")), addr
        assert refused(lambda: node.kv.get("devices/a/t1")), addr
    print("OK")


if __name__ == "__main__":
    main()
