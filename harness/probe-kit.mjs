// Shared by the probes in this folder (adapted from the harness's scale.mjs): output
// files, the relay, the superpeer, and a main that runs one probe and prints
// "N passed, N failed". Copy this folder's .mjs files next to run.sh.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startStatic } from './lib/static.mjs'
import { startNodeRelay } from './lib/relay-node.mjs'
import { startProcess, stopAll, freePort, httpOk, sleep } from './lib/procs.mjs'

const HERE = path.dirname(fileURLToPath(import.meta.url))
export const env = process.env
const GDB_DIST = path.resolve(env.GDB_DIST || new URL('./gdb-dist', import.meta.url).pathname)
const BUN = env.BUN || path.join(HERE, 'node_modules', '.bin', 'bun')
const SUPERPEER_CMD = env.SUPERPEER_CMD || `exec "${BUN}" "${path.join(HERE, 'superpeers', 'genossrv-loopback.mjs')}"`
const SUPERPEER_NAME = env.SUPERPEER_NAME || (env.SUPERPEER_CMD ? 'custom' : 'genossrv')
const SUPERPEER_READY = env.SUPERPEER_READY || (env.SUPERPEER_CMD ? 'tcp' : 'log:superpeer ready')
/** genossrv as the harness launches it, and the server under test: for probes that
 *  measure both in one run. */
export const GENOSSRV = { name: 'genossrv', ready: 'log:superpeer ready', cmd: `exec "${BUN}" "${path.join(HERE, 'superpeers', 'genossrv-loopback.mjs')}"` }
export const UNDER_TEST = { name: SUPERPEER_NAME, ready: SUPERPEER_READY, cmd: SUPERPEER_CMD }

export const runId = `${new Date().toISOString().replace(/[-:T]/g, '').slice(2, 14)}-${Math.random().toString(36).slice(2, 6)}`
let OUT, hlog
export const log = (...a) => { const l = `${new Date().toISOString().slice(11, 23)} ${a.map((x) => typeof x === 'string' ? x : JSON.stringify(x)).join(' ')}`; hlog.write(l + '\n'); if (env.VERBOSE === '1') process.stderr.write(l + '\n') }
const results = []
export const emit = (r) => { const o = { superpeer: SUPERPEER_NAME, run: runId, ...r }; results.push(o); const l = JSON.stringify(o); console.log(l); fs.appendFileSync(path.join(OUT, 'results.jsonl'), l + '\n'); log('RESULT', l) }
export const mem = () => ({ free_mb: Math.round(os.freemem() / 1048576), load1: Number(os.loadavg()[0].toFixed(2)) })

export let st, relayUrls, OUT_DIR
let relayStop
let superpeerEnv = {}
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
/** Starts the superpeer under test, or another one: `spec` = { cmd, ready, name } (a
 *  probe that compares two servers in one run passes each its own). */
export async function startSuperpeer (dbName, dataDir, spec = {}) {
  const cmd = spec.cmd || SUPERPEER_CMD
  const ready = spec.ready || SUPERPEER_READY
  fs.mkdirSync(dataDir, { recursive: true })
  const port = await freePort()
  const p = startProcess({ name: spec.name || 'superpeer', command: cmd, cwd: dataDir, env: { ...env, DB_NAME: dbName, RELAY_URLS: relayUrls.join(','), PORT: String(port), RTC_ENABLED: '1', ICE_SERVERS: env.ICE_SERVERS ?? '', SM_ENABLED: '0', SUPER_ADMINS: '', DATA_DIR: dataDir, DB_PATH: path.join(dataDir, 'data.sqlite'), GDB_DIST, HARNESS_DIR: HERE, ...superpeerEnv }, logFile: path.join(OUT, `${spec.name || 'superpeer'}.log`) })
  const [mode, ...rest] = ready.split(':')
  if (mode === 'log') { if (!(await p.waitForLog(new RegExp(rest.join(':')), 30000))) throw new Error('superpeer not ready') } else if (mode === 'delay') await sleep(Number(rest[0] || 2000))
  else { const t0 = Date.now(); const { tcpOk } = await import('./lib/procs.mjs'); while (!(await (mode === 'http' ? httpOk(`http://127.0.0.1:${port}${rest.join(':') || '/'}`) : tcpOk(port)))) { if (Date.now() - t0 > 30000) throw new Error('superpeer not ready'); await sleep(100) } }
  return p
}


const SHIM = fs.readFileSync(path.join(HERE, 'page', 'rtc-loopback-shim.js'), 'utf8')
const isLoopback = (h) => h === '127.0.0.1' || h === 'localhost' || h === '[::1]' || h === '::1'

/** One browser on one of our pages (page/sm.html): its own Chromium and profile, the
 *  harness's network hygiene (loopback-only ICE shim, non-loopback requests aborted).
 *  `params` go into the page's query string next to db and relays. */
export async function launchPage (label, page, db, params = {}) {
  const { chromium } = await import('playwright-core')
  const { CHROMIUM, CHROME_ARGS } = await import('./lib/browser.mjs')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gdbh-page-'))
  const context = await chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args: CHROME_ARGS, ignoreDefaultArgs: ['--enable-automation'], timeout: 30000 })
  await context.grantPermissions(['camera', 'microphone'], { origin: new URL(st.url).origin })
  await context.addInitScript({ content: SHIM })
  await context.route((u) => !isLoopback(u.hostname), (r) => { log(`[${label}] BLOCKED ${r.request().url()}`); return r.abort('blockedbyclient') })
  await context.routeWebSocket((u) => !isLoopback(u.hostname), (ws) => ws.close({ code: 1008, reason: 'blocked by harness' }))
  const tab = context.pages()[0] || await context.newPage()
  tab.on('console', (m) => log(`[${label}] ${m.type()}: ${m.text()}`))
  tab.on('pageerror', (e) => log(`[${label}] pageerror: ${e.message}`))
  const q = new URLSearchParams({ db, relays: relayUrls.join(','), ...params })
  await tab.goto(`${st.url}/harness/${page}?${q}`, { timeout: 30000 })
  await tab.waitForFunction(() => window.H && (window.H.ready || window.H.error), null, { timeout: 30000 })
  const err = await tab.evaluate(() => window.H.error)
  if (err) { await context.close(); throw new Error(`${label}: ${err}`) }
  return {
    label,
    address: await tab.evaluate(() => window.H.address),
    eval: (fn, arg) => tab.evaluate(fn, arg),
    put: (value, id) => tab.evaluate(([v, i]) => window.H.db.put(v, i), [value, id]),
    get: (id) => tab.evaluate(async (i) => (await window.H.db.get(i)).result ?? null, id),
    waitNode: (id, pred, ms) => tab.evaluate(([i, p, t]) => window.H.waitNode(i, p, t), [id, pred.toString(), ms]),
    waitConnected: (n, ms) => tab.evaluate(([nn, t]) => window.H.waitConnected(nn, t), [n, ms]),
    close: async () => { try { await context.close() } catch {} fs.rmSync(dir, { recursive: true, force: true }) }
  }
}

/** Runs `probe` between a fresh static server and relay, and exits with its verdict. */
export async function runProbe (name, probe, extraSuperpeerEnv = {}) {
  superpeerEnv = extraSuperpeerEnv
  OUT = path.resolve(env.OUT_DIR || path.join(HERE, 'out', `${name}-${runId}`))
  OUT_DIR = OUT
  fs.mkdirSync(OUT, { recursive: true })
  hlog = fs.createWriteStream(path.join(OUT, `${name}.log`))
  let code = 1
  try {
    st = await startStatic({ pageDir: path.join(HERE, 'page'), distDir: GDB_DIST })
    await startRelay()
    await probe()
    code = results.every((r) => r.pass) ? 0 : 1
  } finally {
    try { await relayStop?.() } catch {}
    await stopAll().catch(() => {})
    try { await st?.close() } catch {}
    const passed = results.filter((r) => r.pass).length
    console.log(`${passed} passed, ${results.length - passed} failed`)
    process.exit(code)
  }
}
export { sleep }
