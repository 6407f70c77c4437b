// Big-state probe for genosdb-fallback (issue 4): a writer browser puts N nodes of
// 1 KB of random base64 each (barely compressible), waits, and leaves; a fresh browser
// must then get every node from the superpeer alone. A full state that large is over
// the 100-frame ceiling of one GenosRTC message, so a server that sends it as one
// message never delivers it.
//
// Copy this file into a writable copy of ../shared/harness (next to scale.mjs) and run:
//   ./run.sh bigstate.mjs                                   # against genossrv
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh bigstate.mjs     # against the daemon
// Knobs: BIG_NODES (3000), BIG_BYTES (1024), BIG_T_MS (90000).
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
const OUT = path.resolve(env.OUT_DIR || path.join(HERE, 'out', `bigstate-${runId}`))
fs.mkdirSync(OUT, { recursive: true })
const hlog = fs.createWriteStream(path.join(OUT, 'bigstate.log'))
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
  const p = startProcess({ name: 'superpeer', command: SUPERPEER_CMD, cwd: dataDir, env: { ...env, DB_NAME: dbName, RELAY_URLS: relayUrls.join(','), PORT: String(port), RTC_ENABLED: '1', ICE_SERVERS: env.ICE_SERVERS ?? '', SM_ENABLED: '0', SUPER_ADMINS: '', DATA_DIR: dataDir, DB_PATH: path.join(dataDir, 'data.sqlite'), GDB_DIST, HARNESS_DIR: HERE }, logFile: path.join(OUT, 'superpeer.log') })
  const [mode, ...rest] = SUPERPEER_READY.split(':')
  if (mode === 'log') { if (!(await p.waitForLog(new RegExp(rest.join(':')), 30000))) throw new Error('superpeer not ready') } else if (mode === 'delay') await sleep(Number(rest[0] || 2000))
  else { const t0 = Date.now(); const { tcpOk } = await import('./lib/procs.mjs'); while (!(await (mode === 'http' ? httpOk(`http://127.0.0.1:${port}${rest.join(':') || '/'}`) : tcpOk(port)))) { if (Date.now() - t0 > 30000) throw new Error('superpeer not ready'); await sleep(100) } }
  return p
}

async function probeBigState () {
  const k = Number(env.BIG_NODES || 3000)
  const bytes = Number(env.BIG_BYTES || 1024)
  const db = `big-${runId}`
  const sp = await startSuperpeer(db, path.join(OUT, 'sp-big'))
  try {
    const w = await launchPeer({ baseUrl: st.url, dbName: db, relayUrls, label: 'big-writer', log })
    await w.waitConnected(1, 20000)
    const t0 = Date.now()
    await w.eval(async ({ k, bytes }) => {
      const blob = () => {
        const b = new Uint8Array(Math.ceil(bytes * 3 / 4))
        crypto.getRandomValues(b)
        return btoa(String.fromCharCode(...b)).slice(0, bytes)
      }
      // A browser batches the puts of one burst into one message, and a message over
      // 100 frames never leaves it: pause every 50 puts so each batch goes out live.
      for (let i = 0; i < k; i++) {
        await window.H.db.put({ kind: 'big', i, blob: blob() }, `big-${i}`)
        if (i % 50 === 49) await new Promise((resolve) => setTimeout(resolve, 40))
      }
    }, { k, bytes })
    const seedMs = Date.now() - t0
    await sleep(Math.max(5000, k * 2)) // let the superpeer absorb and persist
    await w.close()
    const t1 = Date.now()
    const r = await launchPeer({ baseUrl: st.url, dbName: db, relayUrls, label: 'big-reader', log })
    const res = await r.waitMap({ kind: 'big' }, `(rs) => rs.length >= ${k}`, Number(env.BIG_T_MS || 90000), 500)
    emit({ probe: 'bigstate', nodes: k, value_bytes: bytes, pass: res.ok, seed_ms: seedMs, open_to_all_visible_ms: res.ok ? Date.now() - t1 : null, ready_to_all_visible_ms: res.ok ? res.ms : null, seen: res.count, reader_ready_ms: r.readyMs, rtc: await r.rtc(), ...mem() })
    await r.close()
  } catch (e) {
    emit({ probe: 'bigstate', nodes: k, pass: false, error: String(e.stack || e), ...mem() })
  }
  await sp.stop()
}

let code = 1
try {
  st = await startStatic({ pageDir: path.join(HERE, 'page'), distDir: GDB_DIST })
  await startRelay()
  await probeBigState()
  code = results.every((r) => r.pass) ? 0 : 1
} finally {
  try { await relayStop?.() } catch {}
  await stopAll().catch(() => {})
  try { await st?.close() } catch {}
  const passed = results.filter((r) => r.pass).length
  console.log(`${passed} passed, ${results.length - passed} failed`)
  process.exit(code)
}
