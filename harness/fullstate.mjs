// Full-state delivery probe (issue 15): a writer browser puts N nodes, leaves, and a
// fresh browser must end up holding exactly what the writer wrote, served by the
// superpeer alone. The reader's graph is compared by an exact digest (SHA-256 over every
// id and value, sorted by id), not only by a count.
//
// Cases (FS_CASES, comma list of <nodes>x<value bytes>:<timing>):
//   settled  the writer waits max(5 s, 2 ms per node) after its last put, then closes;
//            the superpeer has long dropped its link when the reader joins.
//   drained  the writer closes as soon as its data channels have sent everything, and
//            the reader opens at once: the superpeer still holds the writer's stale
//            link (the page is gone) while it serves the reader.
//   imported the superpeer's store is seeded before it starts through its `import` tool
//            (genosdb-fallback only: the binary is taken from SUPERPEER_CMD `exec <bin>`),
//            from a file this probe generates; no writer browser. For graphs a
//            seeding browser cannot write in reasonable time (100,000 nodes).
// Values: `<bytes>` characters of random base64 (barely compressible), in
// {kind, i, blob}; ids `<kind>-00000`...
//
// Copy this folder's .mjs files next to the shared harness's run.sh, then:
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh fullstate.mjs
// Knobs: FS_CASES (3000x1024:settled,3000x1024:drained,20000x1024:drained,100000x32:drained),
// FS_T_MS (reader deadline; default 30 s + 3 ms per node), PAGE_DEBUG=1 (reader console
// in the probe log).
import path from 'node:path'
import fs from 'node:fs'
import crypto from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { launchPeer } from './lib/browser.mjs'
import { runProbe, startSuperpeer, emit, mem, log, runId, env, st, relayUrls, OUT_DIR, sleep } from './probe-kit.mjs'

const CASES = (env.FS_CASES || '3000x1024:settled,3000x1024:drained,20000x1024:drained,100000x32:drained')
  .split(',').map((c) => {
    const [size, timing = 'drained'] = c.split(':')
    const [nodes, bytes] = size.split('x').map(Number)
    return { nodes, bytes, timing }
  })

// Runs in a page: SHA-256 (hex) over "<id>\n<kind>\n<i>\n<blob>\n" of every node of
// `kind`, sorted by id, and how many there are.
const DIGEST = async (kind) => {
  const { results } = await window.H.db.map({ query: { kind }, realtime: false })
  const rows = results.map((r) => `${r.id}\n${r.value.kind}\n${r.value.i}\n${r.value.blob}\n`).sort()
  const buf = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(rows.join('')))
  return { count: rows.length, digest: [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, '0')).join('') }
}

// Writes k nodes as an import file, imports them into the superpeer's data dir with its
// own `import` tool, and returns the digest DIGEST would compute over them.
function seedByImport (db, dataDir, kind, k, bytes) {
  const bin = /exec\s+(\S+)/.exec(env.SUPERPEER_CMD || '')?.[1]
  if (!bin) throw new Error('imported: SUPERPEER_CMD must be `exec <genosdb-fallback binary>`')
  fs.mkdirSync(dataDir, { recursive: true })
  const t0 = Date.now()
  const lines = []
  const rows = []
  for (let i = 0; i < k; i++) {
    const blob = crypto.randomBytes(Math.ceil(bytes * 3 / 4) + 3).toString('base64').slice(0, bytes)
    const id = `${kind}-${String(i).padStart(5, '0')}`
    lines.push(JSON.stringify({ id, value: { kind, i, blob }, edges: [], timestamp: { physical: t0 + i, logical: 0 } }))
    rows.push(`${id}\n${kind}\n${i}\n${blob}\n`)
  }
  const file = path.join(dataDir, 'seed.jsonl')
  fs.writeFileSync(file, lines.join('\n') + '\n')
  execFileSync(bin, ['import', file], { env: { ...env, DATA_DIR: dataDir, DB_NAME: db }, stdio: ['ignore', 'ignore', 'inherit'] })
  rows.sort()
  const digest = crypto.createHash('sha256').update(rows.join('')).digest('hex')
  return { digest, ms: Date.now() - t0 }
}

async function oneCase ({ nodes: k, bytes, timing }, n) {
  const kind = `fs${n}n${k}x${bytes}${timing[0]}`
  const db = `fs-${runId}-${kind}`
  const dataDir = path.join(OUT_DIR, `sp-${kind}`)
  const imported = timing === 'imported' ? seedByImport(db, dataDir, kind, k, bytes) : null
  const sp = await startSuperpeer(db, dataDir)
  const out = { probe: 'fullstate', nodes: k, value_bytes: bytes, timing }
  try {
    if (imported) {
      out.seed_ms = imported.ms
      out.writer_digest = imported.digest
    } else {
    const w = await launchPeer({ baseUrl: st.url, dbName: db, relayUrls, label: `${kind}-writer`, log })
    const linked = await w.waitConnected(1, 20000)
    if (!linked.ok) throw new Error('the writer never linked to the superpeer')
    const t0 = Date.now()
    // Every data channel the page sends on, so the writer can wait until they drained.
    await w.eval(() => {
      window.__chs = new Set()
      const send = RTCDataChannel.prototype.send
      RTCDataChannel.prototype.send = function (d) { window.__chs.add(this); return send.call(this, d) }
    })
    const wrote = await w.eval(async ({ k, bytes, kind }) => {
      const blob = () => {
        const b = new Uint8Array(Math.ceil(bytes * 3 / 4) + 3)
        crypto.getRandomValues(b)
        return btoa(String.fromCharCode(...b)).slice(0, bytes)
      }
      // A browser sends the puts of one burst as one message, and a message over 100
      // frames never leaves it: pause after every ~48 KB of values.
      const batch = Math.max(50, Math.floor(49152 / Math.max(bytes, 1)))
      const rows = []
      for (let i = 0; i < k; i++) {
        const value = { kind, i, blob: blob() }
        const id = `${kind}-${String(i).padStart(5, '0')}`
        await window.H.db.put(value, id)
        rows.push(`${id}\n${kind}\n${i}\n${value.blob}\n`)
        if (i % batch === batch - 1) await new Promise((resolve) => setTimeout(resolve, 40))
      }
      rows.sort()
      const buf = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(rows.join('')))
      return { digest: [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, '0')).join('') }
    }, { k, bytes, kind })
    out.seed_ms = Date.now() - t0
    if (timing === 'settled') {
      await sleep(Math.max(5000, k * 2))
    } else {
      // Sent means handed to SCTP and acknowledged: bufferedAmount back at 0.
      const drained = await w.eval(async () => {
        const t = performance.now()
        await new Promise((resolve) => setTimeout(resolve, 100))
        while ([...window.__chs].some((c) => c.readyState === 'open' && c.bufferedAmount > 0)) {
          if (performance.now() - t > 60000) return false
          await new Promise((resolve) => setTimeout(resolve, 10))
        }
        return true
      })
      if (!drained) throw new Error('the writer never drained its channels')
    }
    out.writer_digest = wrote.digest
    await w.close()
    }
    const t1 = Date.now()
    const r = await launchPeer({ baseUrl: st.url, dbName: db, relayUrls, label: `${kind}-reader`, log, debug: true })
    const seen = { full: 0, delta: 0, saved: 0, errors: [] }
    const tally = (l) => {
      if (l.includes('[FULL SYNC RECEIVED]')) seen.full++
      if (l.includes('[DELTA SYNC RECEIVED]')) seen.delta++
      if (l.includes('[STATE CHANGED]')) seen.saved++
      if (/ error: | warning: /.test(l) && seen.errors.length < 10) seen.errors.push(l.slice(0, 300))
    }
    r.consoleLines.forEach(tally)
    r.page.on('console', (m) => tally(`[x] ${m.type()}: ${m.text()}`))
    const deadline = Number(env.FS_T_MS || 30000 + 3 * k)
    const res = await r.waitMap({ kind }, `(rs) => rs.length >= ${k}`, deadline, 250)
    out.ready_to_all_visible_ms = res.ok ? res.ms : null
    out.open_to_all_visible_ms = res.ok ? Date.now() - t1 : null
    // A few more seconds: a wrong extra node or a late overwrite would show now.
    await sleep(res.ok ? 1000 : 0)
    const held = await r.eval(DIGEST, kind)
    out.reader_count = held.count
    out.reader_digest = held.digest
    out.pass = held.count === k && held.digest === out.writer_digest
    out.reader = { ready_ms: r.readyMs, console: seen, rtc: await r.rtc() }
    await r.close()
  } catch (e) {
    out.pass = false
    out.error = String(e.stack || e)
  }
  emit({ ...out, ...mem() })
  await sp.stop()
}

await runProbe('fullstate', async () => {
  for (const [n, c] of CASES.entries()) await oneCase(c, n)
})
