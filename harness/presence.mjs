// Presence probe for genosdb-fallback: with ROOM_PRESENCE=1 the superpeer is in the
// app room (db.room) too; a browser must see it there as type "superpeer" (peer:seen
// from its announces, peer:join once connected).
//
// Copy this file next to scale.mjs in a writable copy of the GenosDB browser harness
// (docs/DEVELOPMENT.md, "Real browsers") and run:
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh presence.mjs     # against the daemon
import path from 'node:path'
import { launchPeer } from './lib/browser.mjs'
import { runProbe, startSuperpeer, emit, mem, log, runId, env, st, relayUrls, OUT_DIR, sleep } from './probe-kit.mjs'

async function probePresence () {
  const db = `presence-${runId}`
  const sp = await startSuperpeer(db, path.join(OUT_DIR, 'sp-presence'))
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

await runProbe('presence', probePresence, { ROOM_PRESENCE: '1' })
