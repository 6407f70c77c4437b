// genosdb-fallback's harness page for Security Manager rooms (and passwords): one
// GenosDB peer opened with `sm: { superAdmins }`, logged in with a well-known TEST
// mnemonic given in the URL (never a real key). Same window.H helpers as the shared
// harness's peer.js. Query: db, relays, admins (comma list), mnemonic, password,
// cells (1) and cellSize.
const q = new URLSearchParams(location.search)
const H = window.H = { ready: false, error: null, db: null, t0: Date.now(), roomPeers: new Set(), address: null }
const status = (s) => { document.getElementById('status').textContent = s }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
try {
  const { gdb } = await import('/dist/gdb.min.js')
  const opts = { rtc: { relayUrls: (q.get('relays') || '').split(',').filter(Boolean) } }
  if (q.get('password')) opts.password = q.get('password')
  if (q.get('cells')) opts.rtc.cells = q.get('cellSize') ? { cellSize: Number(q.get('cellSize')) } : true
  if (q.get('admins') !== null) opts.sm = { superAdmins: q.get('admins').split(',').filter(Boolean) }
  if (q.get('debug') === '1') opts.debug = true
  H.db = await gdb(q.get('db'), opts)
  H.seenTypes = {}
  H.db.room.on('peer:seen', (id, type) => { H.seenTypes[id] = type })
  H.joinTypes = {}
  H.db.room.on('peer:join', (id, type) => { H.roomPeers.add(id); H.joinTypes[id] = type })
  H.db.room.on('peer:leave', (id) => H.roomPeers.delete(id))
  if (q.get('mnemonic')) {
    await H.db.sm.loginOrRecoverUserWithMnemonic(q.get('mnemonic'))
    H.address = H.db.sm.getActiveEthAddress()
  }
  H.ready = true
  H.readyAt = Date.now()
  status('ready ' + q.get('db') + ' ' + (H.address || 'anonymous'))
} catch (e) {
  H.error = String((e && e.stack) || e)
  status('error ' + H.error)
}

H.waitNode = async (id, predSrc, timeoutMs, pollMs = 50) => {
  const pred = new Function('node', 'return (' + predSrc + ')(node)') // eslint-disable-line no-new-func
  const t0 = performance.now()
  let node = null
  while (true) {
    node = (await H.db.get(id)).result ?? null
    let ok = false
    try { ok = !!pred(node) } catch {}
    if (ok) return { ok: true, ms: Math.round(performance.now() - t0), node }
    if (performance.now() - t0 > timeoutMs) return { ok: false, ms: Math.round(performance.now() - t0), node }
    await sleep(pollMs)
  }
}

H.waitConnected = async (n, timeoutMs) => {
  const t0 = performance.now()
  while (performance.now() - t0 < timeoutMs) {
    if ((window.__rtcShim?.connected() ?? 0) >= n) return { ok: true, ms: Math.round(performance.now() - t0) }
    await sleep(50)
  }
  return { ok: false, ms: Math.round(performance.now() - t0) }
}
