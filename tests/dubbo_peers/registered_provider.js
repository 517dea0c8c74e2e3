'use strict';
// A real third-party Dubbo 2 provider that registers itself in ZooKeeper in Dubbo's layout, with sofa-rpc-node's
// own ZooKeeper registry (the address's path is the root: 127.0.0.1:2181/dubbo -> /dubbo/{interface}/providers).
// usage: node registered_provider.js <port> <zookeeper host:port/root> [tag]
// who() answers its tag, so a test can tell providers apart.  SIGTERM: deregister, wait 500 ms for
// calls in flight, then close (sofa-rpc-node's server.close() unpublishes first).
const { RpcServer } = require('sofa-rpc-node').server;
const { ZookeeperRegistry } = require('sofa-rpc-node').registry;
const protocol = require('dubbo-remoting');
const [portArg, zkAddress, tagArg] = process.argv.slice(2);
const port = Number(portArg);
const tag = tagArg || String(port);
const logger = { info() {}, warn() {}, debug() {}, error: console.error };
const registry = new ZookeeperRegistry({ logger, address: zkAddress });
const server = new RpcServer({ logger, port, protocol, registry, appName: 'txmesh-peer', publishAddress: '127.0.0.1' });
const sleep = ms => new Promise(r => setTimeout(r, ms));
server.addService({ interfaceName: 'org.txmesh.peers.EchoService', version: '1.0.0', group: 'SOFA' }, {
  async echo(s) { return s; },
  async who() { return tag; },
  async add(a, b) { return a + b; },
  async slow(ms) { await sleep(ms); return 'slept ' + ms; },
});
process.on('SIGTERM', async () => {
  try {
    await server.unPublish();
    await sleep(500);
    await server.close();
    await registry.close();
  } finally {
    process.exit(0);
  }
});
(async () => {
  await registry.ready();
  await server.start();
  await server.publish();
  console.log('provider ' + tag + ' registered on ' + port);
})().catch(e => { console.error(e); process.exit(1); });
