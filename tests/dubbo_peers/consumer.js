'use strict';
// A real third-party Dubbo 2 consumer (sofa-rpc-node + dubbo-remoting) for txmesh's tests and bench.
// usage: node consumer.js <host:port> <scenario> [n] ; prints one JSON line with the results
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('dubbo-remoting');
const [target, scenario, nArg] = process.argv.slice(2);
const n = Number(nArg || 100);
const logger = { info() {}, warn() {}, debug() {}, error() {} };
const str = s => ({ $class: 'java.lang.String', $: s });
const int = i => ({ $class: 'int', $: i });
(async () => {
  const client = new RpcClient({ logger, protocol });
  const consumer = client.createConsumer({ interfaceName: 'org.txmesh.peers.EchoService', version: '1.0.0', group: 'SOFA', serverHost: target });
  await consumer.ready();
  const call = (m, args, timeout) => consumer.invoke(m, args, { responseTimeout: timeout || 5000 })
    .then(v => ({ ok: v }), e => ({ error: e.name, message: String(e.message).slice(0, 300) }));
  const out = {};
  if (scenario === 'basic') {
    out.echo = await call('echo', [str('héllo')]);
    out.add = await call('add', [int(2), int(40)]);
    out.size = await call('size', [{ $class: 'java.util.HashMap', $: { a: str('1'), b: str('2'), c: str('3') } }]);
    out.count = await call('count', [{ $class: 'java.util.ArrayList', $: [str('x'), str('y')] }]);
    out.fail = await call('fail', [str('boom')]);
  } else if (scenario === 'concurrent') {
    const rs = await Promise.all(Array.from({ length: n }, (_, i) => call('echo', [str('m' + i)])));
    out.correct = rs.filter((r, i) => r.ok === 'm' + i).length;
  } else if (scenario === 'slow') {
    out.slow = await call('slow', [int(n)], 10000);
  } else if (scenario === 'load') {
    // who() for n ms, 8 in flight: how many answers each provider gave, and every failure
    out.tags = {}; out.errors = [];
    const end = Date.now() + n;
    const worker = async () => {
      while (Date.now() < end) {
        const r = await call('who', [], 3000);
        if (r.ok !== undefined) out.tags[r.ok] = (out.tags[r.ok] || 0) + 1; else out.errors.push(r.message);
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
  } else if (scenario === 'echoload') {
    // echo() with 4 in flight until stdin closes (or n ms): calls answered right, and every failure
    out.ok = 0; out.errors = [];
    let stop = false;
    process.stdin.on('end', () => { stop = true; }).resume();
    const end = Date.now() + n;
    const worker = async (w) => {
      for (let i = 0; !stop && Date.now() < end; i++) {
        const r = await call('echo', [str('e' + w + '-' + i)], 5000);
        if (r.ok === 'e' + w + '-' + i) out.ok++; else out.errors.push(r.message || JSON.stringify(r));
      }
    };
    await Promise.all(Array.from({ length: 4 }, (_, w) => worker(w)));
  } else if (scenario === 'steady') {
    // echo() at n calls/s, one at a time, until stdin closes (bench/soak.py); every second a JSON line
    // {t, ok, errors: [{start, end, message}]} of the calls that ended in it (times in seconds since the epoch)
    let stop = false;
    process.stdin.on('end', () => { stop = true; }).resume();
    let ok = 0; let errors = [];
    const flush = () => { console.log(JSON.stringify({ t: Date.now() / 1000, ok, errors })); ok = 0; errors = []; };
    const timer = setInterval(flush, 1000);
    const sleep = ms => new Promise(r => setTimeout(r, ms));
    for (let i = 0; !stop; i++) {
      const start = Date.now();
      const r = await call('echo', [str('s' + i)], 5000);
      if (r.ok === 's' + i) ok++;
      else errors.push({ start: start / 1000, end: Date.now() / 1000, message: r.message || JSON.stringify(r) });
      const wait = 1000 / n - (Date.now() - start);
      if (wait > 0) await sleep(wait);
    }
    clearInterval(timer); flush();
    out.done = true;
  } else if (scenario === 'bench') {
    // n calls, 32 in flight; latencies in microseconds
    const lat = []; let next = 0; const t0 = process.hrtime.bigint();
    const worker = async () => { while (next < n) { next++; const s = process.hrtime.bigint(); const r = await call('echo', [str('x')]); if (r.ok === undefined) out.errors = (out.errors || 0) + 1; lat.push(Number(process.hrtime.bigint() - s) / 1000); } };
    await Promise.all(Array.from({ length: 32 }, worker));
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    lat.sort((a, b) => a - b);
    out.calls = lat.length; out.seconds = secs; out.p50 = lat[Math.floor(lat.length * 0.5)]; out.p99 = lat[Math.floor(lat.length * 0.99)];
  }
  console.log(JSON.stringify(out));
  await client.close();
  process.exit(0);
})().catch(e => { console.log(JSON.stringify({ fatal: String(e && e.message) })); process.exit(1); });
