// Load generator for the collector (Node core modules only): POST /v1/batch with batches of N events over
// keep-alive connections, C requests in flight, for D seconds. Prints one JSON line with the counts and
// request latency percentiles. Usage: node collector_load.mjs <url> <writeKey> <seconds> <concurrency> <batch>
import http from 'node:http'

const [, , url, writeKey, seconds, concurrency, batchSize] = process.argv
const target = new URL(url)
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(concurrency) })
const auth = 'Basic ' + Buffer.from(`${writeKey}:`).toString('base64')
const deadline = Date.now() + Number(seconds) * 1000
const latencies = []
let seq = 0
let accepted = 0
let failed = 0
const statuses = {}

function body() {
  const events = []
  for (let i = 0; i < Number(batchSize); i++) {
    const n = seq++
    events.push({
      type: 'track', userId: `user-${n % 50000}`, event: 'Product Viewed', messageId: `load-${process.pid}-${n}`,
      timestamp: new Date().toISOString(), properties: { sku: `sku-${n % 977}`, price: 19.99, currency: 'EUR' },
      context: { library: { name: 'converge-load', version: '1' }, userAgent: 'bench' },
    })
  }
  return JSON.stringify({ batch: events })
}

function one() {
  return new Promise((resolve) => {
    const payload = body()
    const t0 = process.hrtime.bigint()
    const req = http.request({
      host: target.hostname, port: target.port, path: '/v1/batch', method: 'POST', agent,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload), Authorization: auth },
    }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () => {
        latencies.push(Number(process.hrtime.bigint() - t0) / 1e6)
        statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1
        if (res.statusCode === 200) accepted += JSON.parse(Buffer.concat(chunks)).accepted
        else failed++
        resolve()
      })
    })
    req.on('error', () => { failed++; resolve() })
    req.end(payload)
  })
}

async function worker() {
  while (Date.now() < deadline) await one()
}

const start = Date.now()
await Promise.all(Array.from({ length: Number(concurrency) }, worker))
const elapsed = (Date.now() - start) / 1000
latencies.sort((a, b) => a - b)
const pct = (q) => latencies[Math.min(latencies.length - 1, Math.ceil(q * latencies.length) - 1)]
console.log(JSON.stringify({
  seconds: elapsed, requests: latencies.length, accepted, failed, statuses,
  events_per_s: Math.round(accepted / elapsed), p50_ms: pct(0.5), p99_ms: pct(0.99), max_ms: latencies[latencies.length - 1],
}))
