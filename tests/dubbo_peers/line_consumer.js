'use strict';
// A long-lived real Dubbo 2 consumer (sofa-rpc-node + dubbo-remoting, hessian2) for step-by-step tests: one
// connection to <host:port> for its whole life; each line read on stdin is the argument of one echo() call, and
// each call prints one JSON line: {"ok": value, "ms": n} or {"error": name, "message": text, "ms": n}.
// usage: node line_consumer.js <host:port> [responseTimeoutMs]
const readline = require('readline');
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('dubbo-remoting');
const [target, timeoutArg] = process.argv.slice(2);
const responseTimeout = Number(timeoutArg || 5000);
const logger = { info() {}, warn() {}, debug() {}, error() {} };
(async () => {
  const client = new RpcClient({ logger, protocol });
  const consumer = client.createConsumer({ interfaceName: 'org.txmesh.peers.EchoService', version: '1.0.0', group: 'SOFA', serverHost: target });
  await consumer.ready();
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const start = Date.now();
    const out = await consumer.invoke('echo', [{ $class: 'java.lang.String', $: line }], { responseTimeout })
      .then(v => ({ ok: v }), e => ({ error: e.name, message: String(e.message).slice(0, 300) }));
    out.ms = Date.now() - start;
    console.log(JSON.stringify(out));
  }
  await client.close();
  process.exit(0);
})().catch(e => { console.log(JSON.stringify({ fatal: String(e && e.message) })); process.exit(1); });
