'use strict';
// A real third-party Dubbo 2 provider (sofa-rpc-node + dubbo-remoting, hessian2) for txmesh's tests.
// usage: node provider.js <port>
const { RpcServer } = require('sofa-rpc-node').server;
const protocol = require('dubbo-remoting');
const port = Number(process.argv[2] || 12200);
const logger = { info() {}, warn() {}, debug() {}, error: console.error };
const server = new RpcServer({ logger, port, protocol });
const sleep = ms => new Promise(r => setTimeout(r, ms));
server.addService({ interfaceName: 'org.txmesh.peers.EchoService', version: '1.0.0', group: 'SOFA' }, {
  async echo(s) { return s; },
  async add(a, b) { return a + b; },
  async size(m) { return Object.keys(m || {}).length; },
  async count(l) { return (l || []).length; },
  async fail(m) { throw new Error(m); },
  async slow(ms) { await sleep(ms); return 'slept ' + ms; },
});
server.start().then(() => console.log('provider listening on', port));
