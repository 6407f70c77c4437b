// Browser catch-up, both servers in one run (issue 7): for each graph size, a writer
// browser seeds the server and leaves, then fresh browsers open and wait until
// `db.map` shows every node. genossrv and the server under test take turns on the same
// machine, size by size, so load and thermal state hit both alike.
//
// Each reader logs with GenosDB's debug console, which splits its time:
//   launch → ready (page and GenosDB up), ready → full state received, → merged and
//   saved ("[STATE CHANGED] Saving + emitting"), → visible in db.map.
//
// Copy this folder's .mjs files next to the shared harness's run.sh, then:
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh catchup.mjs
// Knobs: CATCHUP_SIZES (1000,10000), CATCHUP_READERS (3 per server and size).
import path from 'node:path'
import { launchPeer } from './lib/browser.mjs'
import { runProbe, startSuperpeer, emit, mem, log, runId, env, st, relayUrls, OUT_DIR, sleep, GENOSSRV, UNDER_TEST } from './probe-kit.mjs'

const SIZES = (env.CATCHUP_SIZES || '1000,10000').split(',').map(Number)
const READERS = Number(env.CATCHUP_READERS || 3)

async function seed (db, k) {
  const w = await launchPeer({ baseUrl: st.url, dbName: db, relayUrls, label: `seed-${db}`, log })
  await w.waitConnected(1, 20000)
  const t0 = Date.now()
  // A browser batches one burst's puts into one message, and one over 100 frames never
  // leaves it: a pause every 50 puts lets each batch go out live.
  await w.eval(async (k) => {
    for (let i = 0; i < k; i++) {
      await window.H.db.put({ kind: 'bulk', i, text: `node ${i} lorem ipsum dolor sit amet` })
      if (i % 50 === 49) await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }, k)
  const seedMs = Date.now() - t0
  await sleep(Math.max(3000, k / 2)) // let the server absorb and persist
  await w.close()
  return seedMs
}

async function read (db, k, label) {
  const t0 = Date.now()
  const marks = {}
  const r = await launchPeer({ baseUrl: st.url, dbName: db, relayUrls, label, log, debug: true })
  const ready = Date.now() - t0
  r.page.on('console', (m) => {
    const text = m.text()
    const at = Date.now() - t0
    if (text.includes('[FULL SYNC RECEIVED]') && marks.full_received == null) marks.full_received = at
    if (text.includes('[DELTA SYNC RECEIVED]') && marks.delta_received == null) marks.delta_received = at
    if (text.includes('[STATE CHANGED]')) marks.saved = at
  })
  const res = await r.waitMap({ kind: 'bulk' }, `(rs) => rs.length >= ${k}`, Math.max(30000, k * 12), 50)
  const visible = res.ok ? Date.now() - t0 : null
  await r.close()
  return { ok: res.ok, launched_at: new Date(t0).toISOString(), count: res.count, launch_to_ready_ms: ready, launch_to_visible_ms: visible, ready_to_visible_ms: res.ok ? visible - ready : null, ...marks }
}

const median = (xs) => { const s = xs.filter((x) => x != null).sort((a, b) => a - b); return s.length ? s[Math.floor((s.length - 1) / 2)] : null }

async function probeCatchup () {
  for (const k of SIZES) {
    const summary = {}
    for (const server of [GENOSSRV, UNDER_TEST]) {
      const db = `catchup-${runId}-${server.name}-${k}`
      const sp = await startSuperpeer(db, path.join(OUT_DIR, `sp-${server.name}-${k}`), server)
      try {
        const seedMs = await seed(db, k)
        const reads = []
        for (let i = 1; i <= READERS; i++) reads.push(await read(db, k, `${server.name}-${k}-r${i}`))
        const ok = reads.filter((x) => x.ok)
        summary[server.name] = median(ok.map((x) => x.ready_to_visible_ms))
        emit({ probe: 'catchup', server: server.name, nodes: k, pass: ok.length === reads.length, seed_ms: seedMs, median_ready_to_visible_ms: summary[server.name], median_launch_to_visible_ms: median(ok.map((x) => x.launch_to_visible_ms)), reads, ...mem() })
      } catch (e) {
        emit({ probe: 'catchup', server: server.name, nodes: k, pass: false, error: String(e.stack || e), ...mem() })
      }
      await sp.stop()
    }
    const [a, b] = [summary[GENOSSRV.name], summary[UNDER_TEST.name]]
    if (a != null && b != null) log('ratio', { nodes: k, genossrv_ms: a, under_test_ms: b, under_test_over_genossrv: Number((b / a).toFixed(3)) })
  }
}

await runProbe('catchup', probeCatchup)
