// Cells acceptance for genosdb-fallback with real GenosDB browsers (rtc: {cells}).
//   CELLS10  CELLS=1 against browsers with rtc: {cells: true} (cellSize 10): a writer
//            writes and leaves; a fresh browser gets the data from the daemon; with
//            ROOM_PRESENCE=1 a presence page sees the daemon as "superpeer".
//   CELLS2   CELL_SIZE=2 against 4 browsers with rtc: {cells: {cellSize: 2}} (3
//            cells with the daemon): every write reaches every browser, the writer
//            leaves, and a fresh browser gets its data from the room.
//
// Copy this file, probe-kit.mjs and page/sm.html + page/sm-peer.js into a writable
// copy of the GenosDB browser harness (docs/DEVELOPMENT.md; page files into its page/), then:
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh cells.mjs
import path from 'node:path'
import { runProbe, startSuperpeer, launchPage, emit, mem, runId, OUT_DIR, sleep, env } from './probe-kit.mjs'

async function scenario (name, cellSize, extraReaders) {
  const db = `${name.toLowerCase()}-${runId}`
  const spEnv = { CELLS: '1', CELL_SIZE: String(cellSize), ROOM_PRESENCE: '1', GENOSSRV_CELLS: '1' }
  Object.assign(process.env, spEnv)
  const sp = await startSuperpeer(db, path.join(OUT_DIR, `sp-${name}`))
  const open = []
  const page = async (label) => { const p = await launchPage(label, 'sm.html', db, { cells: '1', ...(cellSize !== 10 ? { cellSize: String(cellSize) } : {}) }); open.push(p); return p }
  try {
    const t0 = Date.now()
    const others = []
    for (let i = 0; i < extraReaders; i++) others.push(await page(`${name}-reader${i}`))
    const writer = await page(`${name}-writer`)
    const conn = await writer.waitConnected(1, 30000)
    // Let the overlay seal before writing (quiet gap 2 s, then links pruned after 5 s).
    await sleep(9000)
    await writer.put({ from: 'writer', cellSize }, 'w1')
    const seen = []
    for (const o of others) seen.push((await o.waitNode('w1', (n) => !!n, 20000)).ok)
    await sleep(2000)
    // Everyone leaves: only the daemon can serve the fresh browser.
    for (const p of open.splice(0)) await p.close()
    const fresh = await page(`${name}-fresh`)
    const got = await fresh.waitNode('w1', (n) => n && n.value && n.value.from === 'writer', 30000)
    emit({ probe: `${name}_fresh_browser_gets_data`, pass: conn.ok && got.ok && seen.every(Boolean), readers_saw_live: seen, launch_to_visible_ms: Date.now() - t0, ...mem() })
    const presence = await fresh.eval(() => new Promise((resolve) => {
      const types = () => ({ seen: window.H.seenTypes, joined: window.H.joinTypes })
      const ok = () => Object.values(window.H.seenTypes).includes('superpeer') || Object.values(window.H.joinTypes).includes('superpeer')
      const t = setInterval(() => { if (ok()) { clearInterval(t); resolve(types()) } }, 100)
      setTimeout(() => { clearInterval(t); resolve(types()) }, 20000)
    }))
    emit({ probe: `${name}_presence_sees_superpeer`, pass: [...Object.values(presence.seen), ...Object.values(presence.joined)].includes('superpeer'), types: presence })
  } catch (e) {
    emit({ probe: name, pass: false, error: String(e.stack || e), ...mem() })
  }
  for (const p of open) await p.close()
  await sp.stop()
}

async function probeCells () {
  if (!env.ONLY || env.ONLY === 'CELLS10') await scenario('CELLS10', 10, 1)
  if (!env.ONLY || env.ONLY === 'CELLS2') await scenario('CELLS2', 2, 3)
}

await runProbe('cells', probeCells)
