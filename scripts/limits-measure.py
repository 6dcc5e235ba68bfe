#!/usr/bin/env python3
"""Measures what hostile or careless requests cost a 3-node cluster.

    scripts/limits-measure.py BINARY

Starts three nodes of BINARY on loopback ports in a temporary directory (no
[limits] table: the defaults), then, one case after the other, prints each
node's peak RSS (VmHWM) after the case, the case's latency, and whether the
leader kept its term:

- idle: RSS after the cluster formed;
- pill: a 2 MiB store, then one transaction of a set and 63 get-tree "";
- recurse: an 8 MiB store read whole by 4 clients at once, 3 times each;
- bodies: 150 concurrent PUTs of 512 KiB.
"""

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=b"", timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, r.read()
    except Exception as e:  # noqa: BLE001 - a measurement notes any failure
        return 0, str(e).encode()
    finally:
        c.close()


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def status(port):
    s, body = request(port, "GET", "/admin/cluster/status", timeout=5)
    return json.loads(body) if s == 200 else None


def leader_term(admins):
    for _ in range(400):
        seen = [status(p) for p in admins]
        if all(seen) and len({(s["leader_id"], s["term"]) for s in seen}) == 1 and seen[0]["leader_id"]:
            return seen[0]["leader_id"], seen[0]["term"]
        time.sleep(0.05)
    return None, None


def fill(port, prefix, n, size):
    value = base64.b64encode(b"x" * size).decode()
    per = max(1, min(64, 300_000 // (len(value) + 100)))
    for start in range(0, n, per):
        ops = [
            {"KV": {"Verb": "set", "Key": f"{prefix}{i:05}", "Value": value}}
            for i in range(start, min(n, start + per))
        ]
        s, body = request(port, "PUT", "/v1/txn", json.dumps(ops).encode())
        assert s == 200, (s, body[:200])


def main():
    binary = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="quorumd-limits-")
    nodes = {i: (free_port(), free_port()) for i in (1, 2, 3)}
    text = (
        '[cluster]\nname = "measure"\nheartbeat_interval = "1s"\npeer_timeout = "3s"\n'
        f'data_dir = "{work}/data"\n'
    )
    for i, (peer, admin) in nodes.items():
        text += f'\n[[node]]\nid = {i}\naddr = "127.0.0.1:{peer}"\nadmin = "127.0.0.1:{admin}"\n'
    cluster = os.path.join(work, "cluster.toml")
    with open(cluster, "w") as f:
        f.write(text)
    procs = {
        i: subprocess.Popen(
            [binary, "run", "--cluster", cluster, "--node-id", str(i)],
            stderr=open(os.path.join(work, f"node-{i}.log"), "w"),
        )
        for i in nodes
    }
    admins = [nodes[i][1] for i in (1, 2, 3)]
    try:
        leader, term = leader_term(admins)
        time.sleep(3)
        lport = nodes[leader][1]
        print(f"idle: RSS {[vm_rss_kib(procs[i].pid) for i in (1, 2, 3)]} KiB")

        def report(case, started, answers):
            took = time.time() - started
            alive = [procs[i].poll() is None for i in (1, 2, 3)]
            now = leader_term(admins) if all(alive) else (None, None)
            hwm = [vm_hwm_kib(procs[i].pid) if alive[i - 1] else -1 for i in (1, 2, 3)]
            print(
                f"{case}: {took:.2f} s, answers {answers}, VmHWM {hwm} KiB, "
                f"leader/term {(leader, term)} -> {now}, nodes alive {alive}"
            )
            return now

        fill(lport, "pill/", 512, 4096)
        ops = [{"KV": {"Verb": "set", "Key": "x", "Value": "MQ=="}}]
        ops += [{"KV": {"Verb": "get-tree", "Key": ""}}] * 63
        started = time.time()
        s, body = request(lport, "PUT", "/v1/txn", json.dumps(ops).encode())
        leader, term = report("pill", started, f"{s} ({len(body)} bytes)")
        if leader is None:
            return

        fill(lport, "big/", 512, 16 * 1024)
        results = []

        def reader():
            for _ in range(3):
                s, body = request(nodes[leader][1], "GET", "/v1/kv/?recurse")
                results.append((s, len(body)))

        started = time.time()
        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        leader, term = report("recurse", started, sorted(set(results)))
        if leader is None:
            return

        codes = []
        value = b"b" * (512 * 1024)

        def writer(i):
            codes.append(request(nodes[leader][1], "PUT", f"/v1/kv/body/{i}", value)[0])

        started = time.time()
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(150)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report("bodies", started, {c: codes.count(c) for c in set(codes)})
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
