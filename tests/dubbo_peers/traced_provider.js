'use strict';
// A real third-party Dubbo 2 provider (sofa-rpc-node + dubbo-remoting, hessian2) that answers each call with the
// attachments it received, as JSON: what a Dubbo app's tracing filter would read (tests/test_integration_tracing.py).
// usage: node traced_provider.js <port>
const { RpcServer } = require('sofa-rpc-node').server;
const protocol = require('dubbo-remoting');
const port = Number(process.argv[2] || 12200);
const logger = { info() {}, warn() {}, debug() {}, error: console.error };

class AttachmentsServer extends RpcServer {
  // each call's context (`this` in the service's methods) holds the call's attachments
  createContext(req) {
    return { attachments: req.data.requestProps || {} };
  }
}

const server = new AttachmentsServer({ logger, port, protocol });
server.addService({ interfaceName: 'org.txmesh.peers.EchoService', version: '1.0.0', group: 'SOFA' }, {
  async attachments() { return JSON.stringify(this.attachments); },
});
server.start().then(() => console.log('provider listening on', port));
