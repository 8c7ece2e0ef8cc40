// The official Segment Node SDK sending to the collector: node send.mjs <collector url> <write key>
// Prints one JSON line: the HTTP statuses the SDK saw and every event it sent (with its messageId).
import { Analytics } from '@segment/analytics-node'

const [, , host, writeKey] = process.argv
const analytics = new Analytics({ writeKey, host, maxEventsInBatch: 10, flushInterval: 200, maxRetries: 0 })
const sent = []
const statuses = []
analytics.on('http_request', (r) => { for (const e of JSON.parse(r.body).batch) sent.push(e) })
analytics.on('http_response', (r) => statuses.push(r.status))
analytics.on('error', (e) => { console.error('error', e.code, e.reason?.message ?? e); process.exitCode = 1 })

analytics.identify({ userId: 'node-user', anonymousId: 'node-anon', traits: { email: 'Node@Example.com', plan: 'pro' } })
analytics.track({ userId: 'node-user', event: 'Signed Up', properties: { source: 'node', seats: 3 } })
analytics.page({ userId: 'node-user', category: 'Docs', name: 'Start', properties: { path: '/start' } })
analytics.alias({ userId: 'node-user', previousId: 'node-anon-2' })
await analytics.closeAndFlush({ timeout: 20000 })
console.log(JSON.stringify({ statuses, sent }))
