"""Drives quorumd's sessions and locks with py-consul, a Consul client from
PyPI, as an application electing a leader through Consul would.

usage: pyconsul_sessions.py HOST:PORT HOST:PORT HOST:PORT   (one admin address per node)
Prints OK and exits 0, or raises.
"""

import sys
import time

import consul
import consul.exceptions


def client(addr, **kw):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port), **kw)


def main():
    a, b, c = (client(x) for x in sys.argv[1:4])

    # py-consul sends lower-case field names.
    s1 = a.session.create(name="elect", lock_delay=0, ttl=10, behavior="release")
    s2 = b.session.create(name="rival", lock_delay=0, checks=[])
    assert s1 != s2

    # Leader election: one winner, whichever node each asks.
    assert b.kv.put("service/leader", "node-a", acquire=s1) is True
    assert c.kv.put("service/leader", "node-b", acquire=s2) is False
    index, entry = c.kv.get("service/leader")
    assert entry["Session"] == s1, entry
    assert entry["LockIndex"] == 1, entry
    assert entry["Value"] == b"node-a", entry

    # info / list / node
    index, info = c.session.info(s1)
    assert info["ID"] == s1 and info["Name"] == "elect" and info["TTL"] == "10s", info
    index, sessions = a.session.list()
    assert {s["ID"] for s in sessions} == {s1, s2}, sessions
    index, on_node = a.session.node(info["Node"])
    assert s1 in {s["ID"] for s in on_node}, on_node

    # A blocking query on the session list wakes on a change.
    index, _ = a.session.list()
    start = time.time()
    s3 = c.session.create(name="third", checks=[])
    index2, sessions = b.session.list(index=index, wait="10s")
    assert int(index2) > int(index) and s3 in {s["ID"] for s in sessions}, (index, index2, s3, sessions)
    assert time.time() - start < 8
    c.session.destroy(s3)

    # renew keeps it; release hands over; the rival takes it with a higher LockIndex.
    renewed = a.session.renew(s1)
    assert renewed["ID"] == s1, renewed
    assert a.kv.put("service/leader", "", release=s1) is True
    assert c.kv.put("service/leader", "node-b", acquire=s2) is True
    index, entry = a.kv.get("service/leader")
    assert entry["Session"] == s2 and entry["LockIndex"] == 2, entry

    # destroy releases; a renew of a destroyed session is a 404.
    assert b.session.destroy(s2) is True
    index, entry = a.kv.get("service/leader")
    assert entry.get("Session", "") == "", entry
    a.session.destroy(s1)
    try:
        b.session.renew(s1)
    except consul.exceptions.NotFound:
        pass
    else:
        index, gone = b.session.info(s1)
        assert gone is None, "renewing a destroyed session must fail"

    # Consul's status routes.
    leader = a.status.leader()
    peers = b.status.peers()
    assert leader in peers and len(peers) == 3, (leader, peers)

    print("OK")


if __name__ == "__main__":
    main()
