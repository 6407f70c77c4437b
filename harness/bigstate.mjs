// Big-state probe for genosdb-fallback (issue 4): a writer browser puts N nodes of
// 1 KB of random base64 each (barely compressible), waits, and leaves; a fresh browser
// must then get every node from the superpeer alone. A full state that large is over
// the 100-frame ceiling of one GenosRTC message, so a server that sends it as one
// message never delivers it.
//
// Copy this file next to scale.mjs in a writable copy of the GenosDB browser harness
// (docs/DEVELOPMENT.md, "Real browsers") and run:
//   ./run.sh bigstate.mjs                                   # against genossrv
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh bigstate.mjs     # against the daemon
// Knobs: BIG_NODES (3000), BIG_BYTES (1024), BIG_T_MS (90000).
import path from 'node:path'
import { launchPeer } from './lib/browser.mjs'
import { runProbe, startSuperpeer, emit, mem, log, runId, env, st, relayUrls, OUT_DIR, sleep } from './probe-kit.mjs'

async function probeBigState () {
  const k = Number(env.BIG_NODES || 3000)
  const bytes = Number(env.BIG_BYTES || 1024)
  const db = `big-${runId}`
  const sp = await startSuperpeer(db, path.join(OUT_DIR, 'sp-big'))
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

await runProbe('bigstate', probeBigState)
