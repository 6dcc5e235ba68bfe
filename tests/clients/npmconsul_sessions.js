// Drives quorumd's sessions and locks with the npm `consul` client, as a
// Node application electing a leader through Consul would.
//
// usage: node npmconsul_sessions.js HOST:PORT HOST:PORT HOST:PORT
// Prints OK and exits 0, or throws.

const assert = require("assert");
const Consul = require("consul");

function client(addr) {
  const [host, port] = addr.split(":");
  return new Consul({ host, port: Number(port) });
}

async function main() {
  const [a, b, c] = process.argv.slice(2, 5).map(client);

  const s1 = (await a.session.create({ name: "elect", ttl: "10s", lockdelay: "0s" })).ID;
  const s2 = (await b.session.create({ name: "rival", lockdelay: "0s", checks: [] })).ID;
  assert.notStrictEqual(s1, s2);

  assert.strictEqual(await b.kv.set({ key: "svc/leader", value: "a", acquire: s1 }), true);
  // The client gives a `false` body back as undefined (as it would from Consul).
  assert.ok(!(await c.kv.set({ key: "svc/leader", value: "b", acquire: s2 })));
  let entry = await c.kv.get("svc/leader");
  assert.strictEqual(entry.Session, s1);
  assert.strictEqual(entry.LockIndex, 1);

  const info = await c.session.info(s1);
  assert.strictEqual(info.ID, s1);
  const list = await a.session.list();
  assert.deepStrictEqual(new Set(list.map((s) => s.ID)), new Set([s1, s2]));

  await a.session.renew(s1);
  assert.strictEqual(await a.kv.set({ key: "svc/leader", value: "", release: s1 }), true);
  assert.strictEqual(await c.kv.set({ key: "svc/leader", value: "b", acquire: s2 }), true);
  entry = await a.kv.get("svc/leader");
  assert.strictEqual(entry.Session, s2);
  assert.strictEqual(entry.LockIndex, 2);

  await b.session.destroy(s2);
  entry = await a.kv.get("svc/leader");
  assert.ok(!entry.Session, JSON.stringify(entry));
  await a.session.destroy(s1);
  await assert.rejects(b.session.renew(s1));

  const leader = await a.status.leader();
  const peers = await b.status.peers();
  assert.ok(peers.includes(leader) && peers.length === 3, `${leader} ${peers}`);
  console.log("OK");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
