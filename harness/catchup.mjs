// Browser catch-up, genossrv and the server under test in one run (issues 7 and 15):
// for each graph size, a writer browser seeds the server and leaves, then fresh
// browsers open and wait until `db.map` shows every node. The servers take turns on the
// same machine, size by size, so load and thermal state hit both alike.
//
// Each reader's time is split, from its page being ready (GenosDB up):
//   → link open        its data channel to the server opened
//   → first sync byte  the first message from the server arrived on it
//   → full received    GenosDB's debug console logs "[FULL SYNC RECEIVED]" (the first;
//                      a full state in parts logs one per part: full_last is the last)
//   → merged           "[STATE CHANGED] Saving + emitting" after the last part
//   → visible          db.map shows every node (50 ms poll)
// The server's share is ready → full received; merged − full received is the
// browser's own merge, which is not ours to speed up.
//
// Copy this folder's .mjs files next to the shared harness's run.sh, then:
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh catchup.mjs
// Knobs: CATCHUP_SIZES (1000,10000,100000), CATCHUP_READERS (5 per server and size),
// CATCHUP_CONCURRENT=1 (the readers open at once instead of one after another),
// CATCHUP_VARIANTS (e.g. `w64k:SEND_WINDOW_BYTES=65536,w2m:SEND_WINDOW_BYTES=2097152`:
// the server under test once per variant, with those env settings, `;` between two),
// CATCHUP_SERVERS (genossrv,under-test: leave one out to skip it),
// CATCHUP_IMPORT_FROM (e.g. 100000: graphs of at least that many nodes are seeded into
// the server under test through its `import` tool before it starts, from a generated
// file with the same nodes a seeding browser writes, binary from SUPERPEER_CMD `exec
// <bin>`; genossrv has no import and is skipped at those sizes).
import path from 'node:path'
import fs from 'node:fs'
import { execFileSync } from 'node:child_process'
import { launchPeer } from './lib/browser.mjs'
import { runProbe, startSuperpeer, emit, mem, log, runId, env, st, relayUrls, OUT_DIR, sleep, GENOSSRV, UNDER_TEST } from './probe-kit.mjs'

const SIZES = (env.CATCHUP_SIZES || '1000,10000,100000').split(',').map(Number)
const READERS = Number(env.CATCHUP_READERS || 5)
const CONCURRENT = env.CATCHUP_CONCURRENT === '1'
const SERVERS = (env.CATCHUP_SERVERS || 'genossrv,under-test').split(',')

function servers () {
  const out = []
  if (SERVERS.includes('genossrv')) out.push(GENOSSRV)
  if (!SERVERS.includes('under-test')) return out
  if (!env.CATCHUP_VARIANTS) return [...out, UNDER_TEST]
  for (const v of env.CATCHUP_VARIANTS.split(',')) {
    const [name, ...settings] = v.split(':')
    out.push({ ...UNDER_TEST, name: `${UNDER_TEST.name}-${name}`, cmd: `export ${settings.join(':').split(';').join(' ')}; ${UNDER_TEST.cmd}` })
  }
  return out
}

const IMPORT_FROM = Number(env.CATCHUP_IMPORT_FROM || Infinity)

// The nodes `seed` writes, as an import file, imported with the server's own tool.
function seedByImport (server, db, dataDir, k) {
  const bin = /exec\s+(\S+)/.exec(server.cmd || env.SUPERPEER_CMD || '')?.[1]
  if (!bin) throw new Error('CATCHUP_IMPORT_FROM: the server command must be `exec <genosdb-fallback binary>`')
  fs.mkdirSync(dataDir, { recursive: true })
  const t0 = Date.now()
  const lines = []
  for (let i = 0; i < k; i++) {
    lines.push(JSON.stringify({ id: `bulk-${i}`, value: { kind: 'bulk', i, text: `node ${i} lorem ipsum dolor sit amet` }, edges: [], timestamp: { physical: t0 + i, logical: 0 } }))
  }
  const file = path.join(dataDir, 'seed.jsonl')
  fs.writeFileSync(file, lines.join('\n') + '\n')
  execFileSync(bin, ['import', file], { env: { ...env, DATA_DIR: dataDir, DB_NAME: db }, stdio: ['ignore', 'ignore', 'inherit'] })
  return Date.now() - t0
}

async function seed (db, k) {
  const w = await launchPeer({ baseUrl: st.url, dbName: db, relayUrls, label: `seed-${db}`, log })
  const linked = await w.waitConnected(1, 20000)
  if (!linked.ok) throw new Error('the seeding browser never linked to the server')
  const t0 = Date.now()
  // A browser batches one burst's puts into one message, and one over 100 frames never
  // leaves it: a pause every 200 puts (about 16 KB) lets each batch go out live.
  await w.eval(async (k) => {
    for (let i = 0; i < k; i++) {
      await window.H.db.put({ kind: 'bulk', i, text: `node ${i} lorem ipsum dolor sit amet` })
      if (i % 200 === 199) await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }, k)
  const seedMs = Date.now() - t0
  await sleep(Math.max(3000, k / 10)) // let the server absorb and persist
  await w.close()
  return seedMs
}

async function read (db, k, label) {
  const t0 = Date.now()
  const marks = { full_parts: 0 }
  const r = await launchPeer({ baseUrl: st.url, dbName: db, relayUrls, label, debug: true, log: () => {} })
  const ready = Date.now() - t0
  r.page.on('console', (m) => {
    const text = m.text()
    const at = Date.now() - t0
    if (text.includes('[FULL SYNC RECEIVED]')) { marks.full_parts++; marks.full_last = at; marks.full_received ??= at }
    if (text.includes('[DELTA SYNC RECEIVED]') && marks.delta_received == null) marks.delta_received = at
    if (text.includes('[STATE CHANGED]')) marks.saved = at
  })
  // The link's opening and its first incoming message, timed in the page (4 ms polls).
  await r.eval(() => {
    const s = window.__rtcShim
    window.__marks = {}
    const t = setInterval(() => {
      const now = performance.timeOrigin + performance.now()
      if (s.dcOpen > 0 && window.__marks.open == null) window.__marks.open = now
      if (s.dcRecv > 0 && window.__marks.first_byte == null) { window.__marks.first_byte = now; clearInterval(t) }
    }, 1)
  })
  const res = await r.waitMap({ kind: 'bulk' }, `(rs) => rs.length >= ${k}`, Math.max(30000, k * 3), 50)
  const visible = res.ok ? Date.now() - t0 : null
  const pm = await r.eval(() => window.__marks)
  await r.close()
  const rel = (x) => (x == null ? null : Math.round(x - t0 - ready))
  const since = (x) => (x == null ? null : x - ready)
  return {
    ok: res.ok,
    count: res.count,
    launched_at: new Date(t0).toISOString(),
    launch_to_ready_ms: ready,
    ready_to_link_ms: rel(pm.open),
    ready_to_first_byte_ms: rel(pm.first_byte),
    ready_to_full_ms: since(marks.full_received),
    ready_to_full_last_ms: since(marks.full_last),
    full_parts: marks.full_parts,
    ready_to_merged_ms: since(marks.saved),
    ready_to_visible_ms: res.ok ? visible - ready : null
  }
}

const median = (xs) => { const s = xs.filter((x) => x != null).sort((a, b) => a - b); return s.length ? s[Math.floor((s.length - 1) / 2)] : null }
const FIELDS = ['ready_to_link_ms', 'ready_to_first_byte_ms', 'ready_to_full_ms', 'ready_to_full_last_ms', 'ready_to_merged_ms', 'ready_to_visible_ms']

async function probeCatchup () {
  for (const k of SIZES) {
    const summary = {}
    for (const server of servers()) {
      const db = `catchup-${runId}-${server.name}-${k}`
      const dataDir = path.join(OUT_DIR, `sp-${server.name}-${k}`)
      const imported = k >= IMPORT_FROM
      if (imported && server === GENOSSRV) {
        emit({ probe: 'catchup', server: server.name, nodes: k, skipped: 'no import tool; a seeding browser cannot write this many nodes', ...mem() })
        continue
      }
      const importMs = imported ? seedByImport(server, db, dataDir, k) : null
      const sp = await startSuperpeer(db, dataDir, server)
      try {
        const seedMs = imported ? importMs : await seed(db, k)
        let reads = []
        const label = (i) => `${server.name}-${k}-r${i}`
        if (CONCURRENT) reads = await Promise.all([...Array(READERS)].map((_, i) => read(db, k, label(i + 1))))
        else for (let i = 1; i <= READERS; i++) reads.push(await read(db, k, label(i)))
        const ok = reads.filter((x) => x.ok)
        const medians = Object.fromEntries(FIELDS.map((f) => [f, median(ok.map((x) => x[f]))]))
        const worst = Math.max(...ok.map((x) => x.ready_to_visible_ms))
        summary[server.name] = medians
        emit({ probe: 'catchup', server: server.name, nodes: k, readers: READERS, concurrent: CONCURRENT, pass: ok.length === reads.length, seed_ms: seedMs, medians, worst_over_median: medians.ready_to_visible_ms ? Number((worst / medians.ready_to_visible_ms).toFixed(2)) : null, reads, ...mem() })
      } catch (e) {
        emit({ probe: 'catchup', server: server.name, nodes: k, pass: false, error: String(e.stack || e), ...mem() })
      }
      await sp.stop()
    }
    const base = summary[GENOSSRV.name]
    for (const [name, m] of Object.entries(summary)) {
      if (name === GENOSSRV.name || !base) continue
      const ratio = (f) => (m[f] != null && base[f] ? Number((m[f] / base[f]).toFixed(2)) : null)
      log('ratio', { nodes: k, server: name, full_over_genossrv: ratio('ready_to_full_ms'), visible_over_genossrv: ratio('ready_to_visible_ms'), link_over_genossrv: ratio('ready_to_link_ms') })
      emit({ probe: 'catchup-ratio', nodes: k, server: name, pass: true, full_over_genossrv: ratio('ready_to_full_ms'), full_last_over_genossrv: ratio('ready_to_full_last_ms'), visible_over_genossrv: ratio('ready_to_visible_ms'), link_over_genossrv: ratio('ready_to_link_ms') })
    }
  }
}

await runProbe('catchup', probeCatchup)
