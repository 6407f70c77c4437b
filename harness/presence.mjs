// Presence probe for genosdb-fallback: with ROOM_PRESENCE=1 the superpeer is in the
// app room (db.room) too; a browser must see it there as type "superpeer" (peer:seen
// from its announces, peer:join once connected).
//
// Copy this file into a writable copy of ../shared/harness (next to scale.mjs) and run:
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh presence.mjs     # against the daemon
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startStatic } from './lib/static.mjs'
import { startNodeRelay } from './lib/relay-node.mjs'
import { launchPeer, launchSharedBrowser, contextPeer } from './lib/browser.mjs'
import { startProcess, stopAll, freePort, httpOk, sleep } from './lib/procs.mjs'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const env = process.env
const GDB_DIST = path.resolve(env.GDB_DIST || new URL('./gdb-dist', import.meta.url).pathname)
const BUN = env.BUN || path.join(HERE, 'node_modules', '.bin', 'bun')
const SUPERPEER_CMD = env.SUPERPEER_CMD || `exec "${BUN}" "${path.join(HERE, 'superpeers', 'genossrv-loopback.mjs')}"`
const SUPERPEER_NAME = env.SUPERPEER_NAME || (env.SUPERPEER_CMD ? 'custom' : 'genossrv')
const SUPERPEER_READY = env.SUPERPEER_READY || (env.SUPERPEER_CMD ? 'tcp' : 'log:superpeer ready')

const runId = `${new Date().toISOString().replace(/[-:T]/g, '').slice(2, 14)}-${Math.random().toString(36).slice(2, 6)}`
const OUT = path.resolve(env.OUT_DIR || path.join(HERE, 'out', `presence-${runId}`))
fs.mkdirSync(OUT, { recursive: true })
const hlog = fs.createWriteStream(path.join(OUT, 'presence.log'))
const log = (...a) => { const l = `${new Date().toISOString().slice(11, 23)} ${a.map((x) => typeof x === 'string' ? x : JSON.stringify(x)).join(' ')}`; hlog.write(l + '\n'); if (env.VERBOSE === '1') process.stderr.write(l + '\n') }
const results = []
const emit = (r) => { const o = { superpeer: SUPERPEER_NAME, run: runId, ...r }; results.push(o); const l = JSON.stringify(o); console.log(l); fs.appendFileSync(path.join(OUT, 'results.jsonl'), l + '\n'); log('RESULT', l) }
const mem = () => ({ free_mb: Math.round(os.freemem() / 1048576), load1: Number(os.loadavg()[0].toFixed(2)) })

let st, relayUrls, relayStop
async function startRelay () {
  if ((env.RELAY_IMPL || 'genossrv') === 'node') {
    const r = await startNodeRelay({}); relayUrls = [`ws://127.0.0.1:${r.port}`]; relayStop = () => r.close(); return
  }
  const port = await freePort()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gdbh-relay-'))
  const p = startProcess({ name: 'relay', command: `exec "${BUN}" "${path.join(GDB_DIST, 'genossrv.min.js')}" harness-relay-only-${runId}`, env: { ...env, GDB_RELAY: '1', PORT: String(port), GDB_DB_PATH: path.join(dir, 'relay.sqlite'), GDB_RELAY_URLS: `ws://127.0.0.1:${port}` }, cwd: dir, logFile: path.join(OUT, 'relay.log') })
  const t0 = Date.now()
  while (!(await httpOk(`http://127.0.0.1:${port}/`))) { if (Date.now() - t0 > 20000) throw new Error('relay did not start'); await sleep(100) }
  relayUrls = [`ws://127.0.0.1:${port}`]
  relayStop = async () => { await p.stop(); fs.rmSync(dir, { recursive: true, force: true }) }
}
async function startSuperpeer (dbName, dataDir) {
  fs.mkdirSync(dataDir, { recursive: true })
  const port = await freePort()
  const p = startProcess({ name: 'superpeer', command: SUPERPEER_CMD, cwd: dataDir, env: { ...env, ROOM_PRESENCE: '1', DB_NAME: dbName, RELAY_URLS: relayUrls.join(','), PORT: String(port), RTC_ENABLED: '1', ICE_SERVERS: env.ICE_SERVERS ?? '', SM_ENABLED: '0', SUPER_ADMINS: '', DATA_DIR: dataDir, DB_PATH: path.join(dataDir, 'data.sqlite'), GDB_DIST, HARNESS_DIR: HERE }, logFile: path.join(OUT, 'superpeer.log') })
  const [mode, ...rest] = SUPERPEER_READY.split(':')
  if (mode === 'log') { if (!(await p.waitForLog(new RegExp(rest.join(':')), 30000))) throw new Error('superpeer not ready') } else if (mode === 'delay') await sleep(Number(rest[0] || 2000))
  else { const t0 = Date.now(); const { tcpOk } = await import('./lib/procs.mjs'); while (!(await (mode === 'http' ? httpOk(`http://127.0.0.1:${port}${rest.join(':') || '/'}`) : tcpOk(port)))) { if (Date.now() - t0 > 30000) throw new Error('superpeer not ready'); await sleep(100) } }
  return p
}

async function probePresence () {
  const db = `presence-${runId}`
  const sp = await startSuperpeer(db, path.join(OUT, 'sp-presence'))
  try {
    const t0 = Date.now()
    const b = await launchPeer({ baseUrl: st.url, dbName: db, relayUrls, label: 'presence', log })
    const seen = await b.eval(() => new Promise((resolve) => {
      const types = {}
      window.H.db.room.on('peer:seen', (id, type) => { types[id] = type })
      const t = setInterval(() => {
        const ids = [...window.H.roomPeers]
        if (ids.length && ids.every((id) => types[id])) { clearInterval(t); resolve({ ids, types }) }
      }, 100)
      setTimeout(() => { clearInterval(t); resolve({ ids: [...window.H.roomPeers], types }) }, 30000)
    }))
    const ok = seen.ids.length === 1 && seen.types[seen.ids[0]] === 'superpeer'
    emit({ probe: 'presence', pass: ok, launch_to_seen_ms: Date.now() - t0, room_peers: seen.ids.length, types: seen.types, ...mem() })
    await b.close()
  } catch (e) {
    emit({ probe: 'presence', pass: false, error: String(e.stack || e), ...mem() })
  }
  await sp.stop()
}

let code = 1
try {
  st = await startStatic({ pageDir: path.join(HERE, 'page'), distDir: GDB_DIST })
  await startRelay()
  await probePresence()
  code = results.every((r) => r.pass) ? 0 : 1
} finally {
  try { await relayStop?.() } catch {}
  await stopAll().catch(() => {})
  try { await st?.close() } catch {}
  const passed = results.filter((r) => r.pass).length
  console.log(`${passed} passed, ${results.length - passed} failed`)
  process.exit(code)
}
