// Room passwords with real GenosDB browsers: the superpeer runs with PASSWORD; a
// browser opened with the same `password` connects and syncs, one with another
// password never connects (its sealed offers do not open, and ours do not open for it).
//
// Copy this file, probe-kit.mjs and page/sm.html + page/sm-peer.js into a writable
// copy of the GenosDB browser harness (docs/DEVELOPMENT.md; page files into its page/), then:
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh password.mjs
import path from 'node:path'
import { runProbe, startSuperpeer, launchPage, emit, mem, runId, OUT_DIR, sleep } from './probe-kit.mjs'

const PASSWORD = 'correct horse battery staple'

async function probePassword () {
  const db = `pw-${runId}`
  const sp = await startSuperpeer(db, path.join(OUT_DIR, 'sp-password'))
  const open = []
  const page = async (label, password) => { const p = await launchPage(label, 'sm.html', db, { password }); open.push(p); return p }
  try {
    const t0 = Date.now()
    const writer = await page('right-writer', PASSWORD)
    const conn = await writer.waitConnected(1, 30000)
    await writer.put({ secret: 'only for the right password' }, 'pw1')
    await sleep(2000)
    await writer.close()
    const fresh = await page('right-reader', PASSWORD)
    const got = await fresh.waitNode('pw1', (n) => !!n, 20000)
    emit({ probe: 'PW1_right_password_connects_and_syncs', pass: conn.ok && got.ok, connect_ms: conn.ms, launch_to_visible_ms: Date.now() - t0 })
    await fresh.close()

    const wrong = await page('wrong-password', 'not the password')
    const wconn = await wrong.waitConnected(1, 15000)
    const wgot = await wrong.get('pw1')
    emit({ probe: 'PW2_wrong_password_never_connects', pass: !wconn.ok && wgot === null, connected: wconn.ok, saw_data: wgot !== null, ...mem() })
    await wrong.close()
  } catch (e) {
    emit({ probe: 'PW', pass: false, error: String(e.stack || e), ...mem() })
  }
  for (const p of open) await p.close()
  await sp.stop()
}

// genossrv reads GDB_PASSWORD: the same probe runs against it for comparison.
await runProbe('password', probePassword, { PASSWORD, GDB_PASSWORD: PASSWORD })
