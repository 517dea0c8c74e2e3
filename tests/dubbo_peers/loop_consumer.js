'use strict';
// A real Dubbo 2 consumer (sofa-rpc-node + dubbo-remoting) calling echo() back to back on one connection to
// <host:port> until stdin closes, then printing one JSON line of counts: {"ok": n, "errors": {name: n}, "last": text}.
// Counts so far are printed on each line read from stdin (a "tick"), so a test can wait for progress.
// usage: node loop_consumer.js <host:port> [responseTimeoutMs]
const readline = require('readline');
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('dubbo-remoting');
const [target, timeoutArg] = process.argv.slice(2);
const responseTimeout = Number(timeoutArg || 5000);
const logger = { info() {}, warn() {}, debug() {}, error() {} };
const counts = { ok: 0, errors: {}, last: null };
let done = false;
(async () => {
  const client = new RpcClient({ logger, protocol });
  const consumer = client.createConsumer({ interfaceName: 'org.txmesh.peers.EchoService', version: '1.0.0', group: 'SOFA', serverHost: target });
  await consumer.ready();
  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', () => console.log(JSON.stringify(counts)));
  lines.on('close', () => { done = true; });
  console.log(JSON.stringify(counts));
  let i = 0;
  while (!done) {
    try {
      await consumer.invoke('echo', [{ $class: 'java.lang.String', $: 'call-' + (i++) }], { responseTimeout });
      counts.ok++;
    } catch (e) {
      counts.errors[e.name] = (counts.errors[e.name] || 0) + 1;
      counts.last = String(e.message).slice(0, 200);
      await new Promise(r => setTimeout(r, 10));  // no hot loop while no provider is reachable
    }
  }
  console.log(JSON.stringify(counts));
  await client.close();
  process.exit(0);
})().catch(e => { console.log(JSON.stringify({ fatal: String(e && e.message) })); process.exit(1); });
