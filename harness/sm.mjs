// Security Manager acceptance for genosdb-fallback with real GenosDB browsers.
// Pages (page/sm.html) open the room with `sm: { superAdmins: [SA, SRV] }` and log in
// with well-known TEST mnemonics (BIP39/Hardhat test vectors, never real keys). The
// superpeer runs with SM_ENABLED=1, SUPER_ADMINS=SA,SRV, SM_KEY=<SRV test mnemonic> and
// an SM_RULES rule that promotes guest G2.
//
//   SM1  a superadmin's write (with values a naive canonicalizer gets wrong: 2^53+2,
//        0.1, 1e21, emoji and numeric keys) is kept, and a fresh superadmin browser
//        gets it from the daemon alone;
//   SM2  a guest's unauthorized write is not served to that fresh browser;
//   SM3  with no superadmin browser online, the daemon promotes G2 by its rule, and
//        both G2 and another browser online accept the signed promotion live;
//   SM4  the promoted user's write is then accepted and served to a fresh browser.
//
// Copy this file, probe-kit.mjs and page/sm.html + page/sm-peer.js into a writable
// copy of the GenosDB browser harness (docs/DEVELOPMENT.md; page files into its page/), then:
//   SUPERPEER_CMD='exec /path/to/genosdb-fallback' SUPERPEER_NAME=rust \
//     SUPERPEER_READY=http:/health ./run.sh sm.mjs
import path from 'node:path'
import { runProbe, startSuperpeer, launchPage, emit, mem, runId, OUT_DIR, sleep } from './probe-kit.mjs'

const ID = {
  SA: { m: 'test test test test test test test test test test test junk', a: '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266' },
  G1: { m: 'abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about', a: '0x9858EfFD232B4033E47d90003D41EC34EcaEda94' },
  G2: { m: 'zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong', a: '0xfc2077CA7F403cBECA41B1B0F62D91B5EA631B5E' },
  SRV: { m: 'legal winner thank year wave sausage worth useful legal winner thank yellow', a: '0x58A57ed9d8d624cBD12e2C467D34787555bB1b25' }
}
const ADMINS = [ID.SA.a, ID.SRV.a]
const RULES = JSON.stringify([{ if: { ethAddress: ID.G2.a }, then: { assignRole: 'user' } }])
// Values whose canonical form trips naive canonicalizers (genosdb-data.md §14 item 13).
const AWKWARD = { title: 'signed by SA', big: 9007199254740994, f: 0.1, e: 1e21, tiny: 1e-7, '😀': 1, '｡': 2, 10: 'ten', 2: 'two', s: 'a\u2028b/"c' }

async function smPeer (label, db, who) {
  const p = await launchPage(label, 'sm.html', db, { admins: ADMINS.join(','), mnemonic: who.m })
  if (p.address !== who.a) { await p.close(); throw new Error(`${label}: logged in as ${p.address}, expected ${who.a}`) }
  return p
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b)

async function probeSm () {
  const db = `sm-${runId}`
  const sp = await startSuperpeer(db, path.join(OUT_DIR, 'sp-sm'))
  const open = []
  const peer = async (...a) => { const p = await smPeer(...a); open.push(p); return p }
  try {
    // The superadmin writes, then leaves.
    const sa = await peer('SA', db, ID.SA)
    if (!(await sa.waitConnected(1, 30000)).ok) throw new Error('SA never connected to the superpeer')
    await sa.put(AWKWARD, 'p1')
    await sleep(2000)
    await sa.close()

    // A guest registers and writes what it may not, then leaves.
    const g1 = await peer('G1', db, ID.G1)
    if (!(await g1.waitConnected(1, 30000)).ok) throw new Error('G1 never connected')
    await g1.waitNode(`user:${ID.G1.a}`, (n) => n && n.value && n.value.role === 'guest', 10000)
    // Write once the room's data has loaded, as a user would: the op then travels
    // live and signed. (A write made before any peer is connected can only leave
    // inside the guest's own full state, whose nodes browsers adopt unverified,
    // genosdb-data.md §10.6; the daemon does the same.)
    await g1.waitNode('p1', (n) => !!n, 20000)
    // ... and once the first exchange is over: a full state the guest sends back in
    // the same instant would carry the write unsigned, and browsers adopt that too.
    await sleep(3000)
    await g1.put({ title: 'guest write' }, 'g1')
    await sleep(2000)
    await g1.close()

    // A fresh superadmin browser: only the daemon can serve it.
    const t0 = Date.now()
    const fresh = await peer('SA-fresh', db, ID.SA)
    const p1 = await fresh.waitNode('p1', (n) => !!n, 20000)
    emit({ probe: 'SM1_superadmin_write_served', pass: p1.ok && same(p1.node.value, AWKWARD), launch_to_visible_ms: Date.now() - t0, value: p1.node?.value ?? null, ...mem() })
    const registered = await fresh.waitNode(`user:${ID.G1.a}`, (n) => n && n.value && n.value.role === 'guest', 10000)
    await sleep(3000)
    const g1seen = await fresh.get('g1')
    emit({ probe: 'SM2_guest_write_not_served', pass: registered.ok && g1seen === null, guest_registered: registered.ok, g1: g1seen })
    await fresh.close()

    // Governance: no superadmin browser online; G2 registers, an observer is online.
    const observer = await peer('G1-observer', db, ID.G1)
    const g2 = await peer('G2', db, ID.G2)
    const t1 = Date.now()
    const promotedOwn = await g2.waitNode(`user:${ID.G2.a}`, (n) => n && n.value && n.value.role === 'user', 45000)
    const promotedSeen = await observer.waitNode(`user:${ID.G2.a}`, (n) => n && n.value && n.value.role === 'user', 10000)
    emit({ probe: 'SM3_governance_promotes_guest', pass: promotedOwn.ok && promotedSeen.ok && promotedOwn.node.value.assignedByEthAddress === ID.SRV.a, register_to_promoted_ms: Date.now() - t1, g2_node: promotedOwn.node?.value ?? null, observer_accepted: promotedSeen.ok })

    await g2.put({ title: 'user write' }, 'u1')
    const live = await observer.waitNode('u1', (n) => !!n, 10000)
    await sleep(2000)
    await g2.close()
    await observer.close()
    const last = await peer('SA-last', db, ID.SA)
    const u1 = await last.waitNode('u1', (n) => !!n, 20000)
    const g2node = await last.waitNode(`user:${ID.G2.a}`, (n) => n && n.value && n.value.role === 'user', 10000)
    emit({ probe: 'SM4_promoted_user_write_served', pass: u1.ok && g2node.ok && live.ok, observer_saw_live: live.ok, fresh_saw: u1.ok })
    await last.close()
  } catch (e) {
    emit({ probe: 'SM', pass: false, error: String(e.stack || e), ...mem() })
  }
  for (const p of open) await p.close()
  await sp.stop()
}

// genossrv reads the GDB_ names: the same probe runs against it for comparison.
await runProbe('sm', probeSm, {
  SM_ENABLED: '1', SUPER_ADMINS: ADMINS.join(','), SM_KEY: ID.SRV.m, SM_RULES: RULES,
  GDB_SUPERADMINS: ADMINS.join(','), GDB_SM_KEY: ID.SRV.m, GDB_SM_RULES: RULES
})
