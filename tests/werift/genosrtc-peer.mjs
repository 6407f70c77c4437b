// A GenosRTC peer on werift (the pure-JS WebRTC stack of genossrv and of GenosDB apps on
// Node/Bun), written for tests/werift_daemon.rs from the wire spec (docs/PROTOCOL.md). Not
// GenosDB code: it speaks the wire itself, as genossrv does, and the GenosDB data layer only as
// far as the test needs (`sync`, `fullStateSync`, `upsert`).
//
// Signalling: Nostr over one loopback relay, events signed with BIP-340 schnorr
// (@noble/curves), topics from SHA-1 in base36, kinds from the topic, SDP sealed with
// AES-256-GCM under SHA-256(password:appId:roomId), no trickle (candidates inline). Announces on
// the room topic every 2.5 s, like every GenosRTC peer (see MODE for when it starts).
//
//   MODE=answer  announces at once and only answers: the daemon hears us and dials us.
//   MODE=offer   dials the daemon when it hears its announce, and announces from then on (a
//                peer that heard the daemon first). Our peer id is the largest the alphabet
//                allows, so if the daemon dials too (glare), the id rule picks our offer.
//
// Once the data channel opens: sends `[{"type":"sync","timestamp":null}]` on `syncGraph`; when a
// `fullStateSync` carrying the node WANT_ID arrives, reports its value's SHA-256 and then writes
// one node PUT_ID whose value is the text of PUT_FILE, as one `upsert` message. Answers `@_ping`.
//
// env: WERIFT_DIR (node_modules with werift, ws, @noble/curves), RELAY_URL, DB_NAME,
//      MODE, WANT_ID, PUT_ID, PUT_FILE, PASSWORD (optional)
// out (JSON lines): {joined,peerId}, {heard}, {offered}, {answered}, {open}, {got,sha256,chars,
//      wireBytes,frames}, {sent,chars,wireBytes,frames}, {closed}, {warn}, {error}
// Loopback only: host candidates on 127.0.0.1 alone, no STUN.
import crypto from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import fs from 'node:fs'
import { createRequire } from 'node:module'

const env = (k) => {
  const v = process.env[k]
  if (v === undefined) { console.error(`${k} is not set`); process.exit(2) }
  return v
}
const require = createRequire(path.join(path.resolve(env('WERIFT_DIR')), 'package.json'))

// werift reads the interface list for host candidates: show it loopback only.
for (const m of [os, require('os')]) {
  const orig = m.networkInterfaces.bind(m)
  m.networkInterfaces = () => Object.fromEntries(
    Object.entries(orig()).filter(([, addrs]) => addrs.every((a) => a.internal)))
}

const { RTCPeerConnection } = require('werift')
const WebSocket = require('ws')
const { schnorr } = require('@noble/curves/secp256k1')

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const fail = (e) => { out({ error: String(e?.stack ?? e) }); process.exit(1) }
process.on('unhandledRejection', fail)

const MODE = env('MODE')
const RELAY_URL = env('RELAY_URL')
const WANT_ID = env('WANT_ID')
const PUT_ID = env('PUT_ID')
const PUT_VALUE = fs.readFileSync(env('PUT_FILE'), 'utf8')
const APP_ID = '1234'
const ROOM_ID = `graph-sync-room-${env('DB_NAME')}`
const PASSWORD = process.env.PASSWORD ?? ''

// §2: 20 characters of this alphabet, compared as strings for glare.
const ALPHABET = '0123456789AaBbCcDdEeFfGgHhIiJjKkLlMmNnOoPpQqRrSsTtUuVvWwXxYyZz'
const randomId = () => [...crypto.randomBytes(20)].map((b) => ALPHABET[b % 62]).join('')
const selfId = MODE === 'offer' ? 'z'.repeat(20) : randomId()

// §3: topics, kinds, the sealing key.
const topicOf = (s) => [...crypto.createHash('sha1').update(s, 'utf8').digest()]
  .map((b) => b.toString(36)).join('')
const kindOf = (t) => 20000 + ([...t].reduce((a, c) => a + c.charCodeAt(0), 0) % 10000)
const rootTopic = topicOf(`GenosRTC@${APP_ID}@${ROOM_ID}`)
const selfTopic = (id) => topicOf(`GenosRTC@${APP_ID}@${ROOM_ID}@${id}`)
const key = crypto.createHash('sha256').update(`${PASSWORD}:${APP_ID}:${ROOM_ID}`, 'utf8').digest()
const seal = (sdp) => {
  const iv = crypto.randomBytes(12)
  const c = crypto.createCipheriv('aes-256-gcm', key, iv)
  const ct = Buffer.concat([c.update(sdp, 'utf8'), c.final(), c.getAuthTag()])
  return `${[...iv].join(',')}$${ct.toString('base64')}`
}
const unseal = (sealed) => {
  const [ivText, b64] = sealed.split('$')
  const ct = Buffer.from(b64, 'base64')
  const d = crypto.createDecipheriv('aes-256-gcm', key, Buffer.from(ivText.split(',').map(Number)))
  d.setAuthTag(ct.subarray(ct.length - 16))
  return Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]).toString('utf8')
}

// §4: signed Nostr events over one relay.
const sk = schnorr.utils.randomPrivateKey()
const pubkey = Buffer.from(schnorr.getPublicKey(sk)).toString('hex')
const ws = new WebSocket(RELAY_URL)
const subs = new Map()
const publish = (topic, content) => {
  const ev = { kind: kindOf(topic), content: JSON.stringify(content), pubkey,
    created_at: Math.floor(Date.now() / 1000), tags: [['x', topic]] }
  const id = crypto.createHash('sha256')
    .update(JSON.stringify([0, ev.pubkey, ev.created_at, ev.kind, ev.tags, ev.content]), 'utf8').digest()
  ev.id = id.toString('hex')
  ev.sig = Buffer.from(schnorr.sign(id, sk)).toString('hex')
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(['EVENT', ev]))
}
const subscribe = (topic) => {
  const id = [...crypto.randomBytes(64)].map((b) => ALPHABET[b % 62]).join('')
  subs.set(id, topic)
  ws.send(JSON.stringify(['REQ', id, { kinds: [kindOf(topic)], since: Math.floor(Date.now() / 1000), '#x': [topic] }]))
}

// §6: GenosRTC frames on the one `data` channel.
const CHUNK = 16369
const nonces = new Map()
const encode = (channel, data) => {
  let payload = Buffer.from(typeof data === 'string' ? data : JSON.stringify(data), 'utf8')
  let deflated = 0
  if (payload.length >= 512) {
    const z = zlib.deflateSync(payload)
    if (z.length < payload.length) { payload = z; deflated = 1 }
  }
  const n = Math.max(1, Math.ceil(payload.length / CHUNK))
  if (n > 100) throw new Error('Message too large')
  const nonce = ((nonces.get(channel) ?? 0) + 1) % 256
  nonces.set(channel, nonce)
  const name = Buffer.alloc(12)
  name.write(channel, 'utf8')
  const frames = []
  for (let i = 0; i < n; i++) {
    const flags = (i === n - 1 ? 1 : 0) | ((typeof data === 'string' ? 0 : 1) << 3) | (deflated << 4)
    const head = Buffer.from([nonce, flags, Math.round(((i + 1) / n) * 255)])
    frames.push(Buffer.concat([name, head, payload.subarray(i * CHUNK, (i + 1) * CHUNK)]))
  }
  return frames
}
let dc = null
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const send = async (channel, data) => {
  const frames = encode(channel, data)
  for (const f of frames) {
    // GenosRTC waits while more than 64 KiB are queued on the channel.
    while (dc.bufferedAmount > 65535) await sleep(2)
    dc.send(f)
  }
  return { frames: frames.length, wireBytes: frames.reduce((a, f) => a + f.length, 0) }
}
const partial = new Map()
const onFrame = async (buf) => {
  if (buf.length < 15) return
  const channel = buf.subarray(0, 12).toString('utf8').replaceAll('\0', '')
  if (channel === '@_ping') { await send('@_pong', ''); return }
  const [nonce, flags] = [buf[12], buf[13]]
  const k = `${channel}/${nonce}`
  const st = partial.get(k) ?? { chunks: [], wireBytes: 0 }
  partial.set(k, st)
  st.wireBytes += buf.length
  if (!(flags & 2)) st.chunks.push(buf.subarray(15))
  if (!(flags & 1)) return
  partial.delete(k)
  let msg = Buffer.concat(st.chunks)
  if (flags & 16) msg = zlib.inflateSync(msg)
  if (channel !== 'syncGraph' || (flags & 4)) return
  onSync(JSON.parse(msg.toString('utf8')), st)
}

// The GenosDB part: ask for the full state, then write one big node.
let wrote = false
const onSync = async (m, st) => {
  for (const op of Array.isArray(m) ? m : [m]) {
    const node = op?.type === 'fullStateSync' ? op.graphData?.[WANT_ID] : undefined
    if (node === undefined || wrote) continue
    const text = typeof node.value === 'string' ? node.value : JSON.stringify(node.value)
    out({ got: WANT_ID, sha256: crypto.createHash('sha256').update(text, 'utf8').digest('hex'),
      chars: text.length, wireBytes: st.wireBytes, frames: st.chunks.length })
    wrote = true
    const upsert = [{ type: 'upsert', id: PUT_ID, value: PUT_VALUE,
      timestamp: { physical: Date.now(), logical: 1 } }]
    out({ sent: PUT_ID, chars: PUT_VALUE.length, ...(await send('syncGraph', upsert)) })
  }
}

// §5: one RTCPeerConnection, non-trickle SDP, the offerer's `data` channel.
let pc = null
let daemon = null
const newPc = () => new RTCPeerConnection({ iceServers: [], iceAdditionalHostAddresses: ['127.0.0.1'], iceUseIpv6: false })
const gathered = async () => {
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 5000)
      pc.iceGatheringStateChange.subscribe((s) => { if (s === 'complete') { clearTimeout(t); resolve() } })
    })
  }
  return pc.localDescription.sdp.replace(/a=ice-options:trickle\s\n/, '')
}
const wire = (channel) => {
  dc = channel
  const opened = () => {
    out({ open: true })
    send('syncGraph', [{ type: 'sync', timestamp: null }]).catch(fail)
  }
  dc.onopen = opened
  if (dc.readyState === 'open') opened()
  dc.onclose = () => out({ closed: true })
  dc.onmessage = (ev) => {
    if (typeof ev.data !== 'string') onFrame(Buffer.from(ev.data)).catch(fail)
  }
}
const dial = async (x) => {
  pc = newPc()
  wire(pc.createDataChannel('data'))
  await pc.setLocalDescription(await pc.createOffer())
  publish(selfTopic(x), { peerId: selfId, offer: { type: 'offer', sdp: seal(await gathered()) } })
  out({ offered: x })
  announce()
}
const answer = async (x, sealed) => {
  pc = newPc()
  pc.ondatachannel = (ev) => wire(ev.channel)
  await pc.setRemoteDescription({ type: 'offer', sdp: unseal(sealed) })
  await pc.setLocalDescription(await pc.createAnswer())
  publish(selfTopic(x), { peerId: selfId, answer: { type: 'answer', sdp: seal(await gathered()) } })
  out({ answered: x })
}

const onSignal = async (topic, content) => {
  const m = JSON.parse(content)
  const x = m.peerId
  if (typeof x !== 'string' || x === selfId || m.bye) return
  if (daemon === null) { daemon = x; out({ heard: x }) }
  if (x !== daemon) return
  if (m.offer && topic === selfTopic(selfId)) {
    // §4.6 glare: with a dial of our own pending, the larger id's offer wins.
    if (pc !== null && selfId > x) return
    if (pc === null) await answer(x, m.offer.sdp)
  } else if (m.answer && topic === selfTopic(selfId) && MODE === 'offer' && pc !== null) {
    await pc.setRemoteDescription({ type: 'answer', sdp: unseal(m.answer.sdp) })
  } else if (!m.offer && !m.answer && MODE === 'offer' && pc === null) {
    await dial(x)
  }
}

let announcing = false
const announce = () => {
  if (announcing) return
  announcing = true
  const once = () => publish(rootTopic, { peerId: selfId })
  once()
  setInterval(once, 2500)
}
ws.on('open', () => {
  subscribe(rootTopic)
  subscribe(selfTopic(selfId))
  out({ joined: true, peerId: selfId, pubkey })
  if (MODE === 'answer') announce()
})
ws.on('message', (raw) => {
  let m
  try { m = JSON.parse(raw.toString('utf8')) } catch { return }
  if (m[0] === 'EVENT' && subs.has(m[1])) onSignal(subs.get(m[1]), m[2].content).catch(fail)
  else if (m[0] === 'OK' && m[2] === false) out({ warn: `relay refused an event: ${m[3]}` })
})
ws.on('error', fail)
ws.on('close', () => out({ warn: 'relay connection closed' }))
process.stdin.resume()
process.stdin.on('end', async () => { await pc?.close(); ws.close(); process.exit(0) })
