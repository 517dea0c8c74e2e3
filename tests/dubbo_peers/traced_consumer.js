'use strict';
// A real third-party Dubbo 2 consumer (sofa-rpc-node + dubbo-remoting) that makes one attachments() call with the
// attachments given as JSON, as a Dubbo app passes its trace context on; prints {"ok": answer} or {"error": ...}.
// usage: node traced_consumer.js <host:port> '<attachments JSON>'
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('dubbo-remoting');
const [target, attachments] = process.argv.slice(2);
const logger = { info() {}, warn() {}, debug() {}, error() {} };
(async () => {
  const client = new RpcClient({ logger, protocol });
  const consumer = client.createConsumer({ interfaceName: 'org.txmesh.peers.EchoService', version: '1.0.0', group: 'SOFA', serverHost: target });
  await consumer.ready();
  const out = await consumer.invoke('attachments', [], { responseTimeout: 5000, requestProps: JSON.parse(attachments || '{}') })
    .then(v => ({ ok: v }), e => ({ error: e.name, message: String(e.message).slice(0, 300) }));
  console.log(JSON.stringify(out));
  await client.close();
  process.exit(0);
})().catch(e => { console.log(JSON.stringify({ fatal: String(e && e.message) })); process.exit(1); });
