'use strict';
// A real third-party Dubbo 2 consumer that finds its providers in ZooKeeper through sofa-rpc-node's own registry
// code (ZookeeperRegistry, Dubbo's layout under the root path) and calls them (dubbo-remoting, hessian2).
// usage: node zk_consumer.js <zk host:port/root> <interface> <version> <group>
// prints one JSON line each time the provider list changes: {"providers": [urls], "call": {ok|error}} (the call
// is made once the list is not empty).
const { RpcClient } = require('sofa-rpc-node').client;
const { ZookeeperRegistry } = require('sofa-rpc-node').registry;
const protocol = require('dubbo-remoting');
const [address, interfaceName, version, group] = process.argv.slice(2);
const logger = { info() {}, warn() {}, debug() {}, error() {} };
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  const registry = new ZookeeperRegistry({ logger, address });
  await registry.ready();
  const client = new RpcClient({ logger, protocol, registry });
  const consumer = client.createConsumer({ interfaceName, version, group });
  let seq = 0;
  registry.subscribe({ interfaceName, version, group }, async providers => {
    const mine = ++seq;
    const out = { providers };
    if (providers.length) {
      await consumer.ready();
      for (let i = 0; i < 25 && mine === seq; i++) {
        out.call = await consumer.invoke('echo', [{ $class: 'java.lang.String', $: 'via registry' }], { responseTimeout: 3000 })
          .then(v => ({ ok: v }), e => ({ error: e.name, message: String(e.message).slice(0, 200) }));
        if (out.call.ok !== undefined) break;
        await sleep(200);
      }
    }
    if (mine === seq) console.log(JSON.stringify(out));
  });
  process.on('SIGTERM', async () => { await client.close(); process.exit(0); });
})().catch(e => { console.log(JSON.stringify({ fatal: String(e && e.message) })); process.exit(1); });
