'use strict';
// The Dubbo part of etc/demo.sh: one call to org.txmesh.peers.EchoService.echo (version 1.0.0, group SOFA) with a
// real third-party Dubbo 2 consumer (sofa-rpc-node + dubbo-remoting, hessian2), installed in tests/dubbo_peers by
// `npm ci` there; the provider is tests/dubbo_peers/provider.js.
// usage: node etc/demo_dubbo.js <host:port>
const path = require('path');
const peers = require('module').createRequire(path.join(__dirname, '..', 'tests', 'dubbo_peers', 'package.json'));
const { RpcClient } = peers('sofa-rpc-node').client;
const protocol = peers('dubbo-remoting');
const target = process.argv[2] || '127.0.0.1:15003';
const logger = { info() {}, warn() {}, debug() {}, error() {} };
(async () => {
  const client = new RpcClient({ logger, protocol });
  const consumer = client.createConsumer({
    interfaceName: 'org.txmesh.peers.EchoService', version: '1.0.0', group: 'SOFA', serverHost: target,
  });
  await consumer.ready();
  const arg = 'hello dubbo';
  try {
    const result = await consumer.invoke('echo', [{ $class: 'java.lang.String', $: arg }], { responseTimeout: 5000 });
    console.log('org.txmesh.peers.EchoService.echo(%j) -> %j', arg, result);
  } catch (e) {
    console.log('org.txmesh.peers.EchoService.echo(%j) failed: %s: %s', arg, e.name, e.message);
    process.exitCode = 1;
  }
  await client.close();
  process.exit();
})().catch(e => { console.log('dubbo demo failed: %s', e && e.message); process.exit(1); });
