// Drives a quorumd cluster with [acl] enabled (default_policy = "deny")
// through the npm `consul` client, presenting tokens with its own `token`
// option (sent as X-Consul-Token), as an application would against Consul.
// The client has no calls for ACL policies and tokens, so those go through
// Node's fetch, with the management token in `Authorization: Bearer`.
//
// usage: node node_consul_acl.js HOST:PORT HOST:PORT ...
// Prints OK and exits 0, or throws.

const Consul = require("consul");
const assert = require("assert");

function client(addr, defaults) {
  const [host, port] = addr.split(":");
  return new Consul({ host, port: Number(port), defaults });
}

async function refused(promise) {
  try {
    await promise;
  } catch (e) {
    return e.response && e.response.statusCode === 403;
  }
  return false;
}

async function api(addr, token, method, path, body) {
  const r = await fetch(`http://${addr}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  assert.strictEqual(r.status, 200, `${method} ${path}: ${r.status} ${text}`);
  return JSON.parse(text);
}

async function main() {
  const addrs = process.argv.slice(2);
  const [a, b, c] = addrs.map((x) => client(x));

  const root = (await a.acl.bootstrap()).SecretID;
  assert.ok(await refused(b.acl.bootstrap()), "a second bootstrap is refused");
  assert.ok(await refused(c.kv.set("devices/a/t", "1")), "no token, default deny");

  await api(addrs[1], root, "PUT", "/v1/acl/policy", {
    Name: "gateway-a",
    Rules: JSON.stringify({ key_prefix: { "devices/a/": { policy: "write" } } }),
  });
  await api(addrs[1], root, "PUT", "/v1/acl/policy", {
    Name: "read-all",
    Rules: JSON.stringify({ key_prefix: { "": { policy: "read" } } }),
  });
  const gw = await api(addrs[2], root, "PUT", "/v1/acl/token", {
    Policies: [{ Name: "gateway-a" }],
  });
  const ro = await api(addrs[0], root, "PUT", "/v1/acl/token", {
    Policies: [{ Name: "read-all" }],
  });

  // A client whose defaults carry the token, and the per-call option.
  const gwc = client(addrs[1], { token: gw.SecretID });
  assert.strictEqual(await gwc.kv.set("devices/a/t1", "21.5"), true);
  assert.ok(await refused(gwc.kv.set("devices/b/t1", "1")), "devices/b/");
  assert.ok(await refused(gwc.kv.set("config/mode", "x")), "config/");
  assert.strictEqual(
    await c.kv.set({ key: "devices/a/t2", value: "22", token: gw.SecretID }),
    true,
  );
  const admin = client(addrs[0], { token: root });
  assert.strictEqual(await admin.kv.set("devices/b/secret", "s"), true);

  // Read-only reads, never writes.
  const got = await c.kv.get({ key: "devices/a/t1", token: ro.SecretID });
  assert.strictEqual(got.Value, "21.5");
  assert.ok(await refused(c.kv.set({ key: "devices/a/t1", value: "x", token: ro.SecretID })));

  // Listings hide what the token may not read.
  const keys = await gwc.kv.keys("devices/");
  assert.deepStrictEqual(keys, ["devices/a/t1", "devices/a/t2"]);
  const all = await c.kv.keys({ key: "devices/", token: ro.SecretID });
  assert.strictEqual(all.length, 3, JSON.stringify(all));

  // A txn with one forbidden op fails whole.
  const ops = [
    { KV: { Verb: "set", Key: "devices/a/t3", Value: Buffer.from("1").toString("base64") } },
    { KV: { Verb: "set", Key: "devices/b/t3", Value: Buffer.from("1").toString("base64") } },
  ];
  assert.ok(await refused(gwc.transaction.create(ops)), "the txn is refused");
  assert.strictEqual(await admin.kv.get("devices/a/t3"), undefined);

  // Revoked: refused at once on every node.
  await api(addrs[2], root, "DELETE", `/v1/acl/token/${gw.AccessorID}`);
  for (const addr of addrs) {
    const n = client(addr, { token: gw.SecretID });
    assert.ok(await refused(n.kv.set("devices/a/t1", "x")), addr);
    assert.ok(await refused(n.kv.get("devices/a/t1")), addr);
  }
  console.log("OK");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
