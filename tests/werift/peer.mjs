// A werift (pure-JS WebRTC, the stack of genossrv and of GenosDB apps on Node/Bun) peer that
// tests/werift.rs drives over stdin/stdout, one JSON object per line. Not GenosDB code.
//
// in:  {"offer":true}            create the "data" channel and print our offer
//      {"offer":"<sdp>"}         answer a remote offer
//      {"answer":"<sdp>"}        complete our offer
// out: {"sdp":"<sdp>","type":"offer"|"answer"}, {"open":true}, {"echoed":<bytes so far>},
//      {"error":"..."}
// Every binary message that arrives on the channel is sent back unchanged (GenosRTC frames
// included), so a message the Rust side sends returns to it frame by frame.
//
// Loopback only: werift gathers host candidates on 127.0.0.1 alone and uses no STUN server.
// WERIFT_DIR names a directory whose node_modules holds werift.
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { createRequire } from 'node:module'

const dir = process.env.WERIFT_DIR
if (!dir) { console.error('WERIFT_DIR is not set'); process.exit(2) }
const require = createRequire(path.join(path.resolve(dir), 'package.json'))

// werift reads the interface list for host candidates: show it loopback only.
for (const m of [os, require('os')]) {
  const orig = m.networkInterfaces.bind(m)
  m.networkInterfaces = () => Object.fromEntries(
    Object.entries(orig()).filter(([, addrs]) => addrs.every((a) => a.internal)))
}

const { RTCPeerConnection } = require('werift')
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const pc = new RTCPeerConnection({
  iceServers: [],
  iceAdditionalHostAddresses: ['127.0.0.1'],
  iceUseIpv6: false
})
let echoed = 0
const wire = (dc) => {
  dc.onopen = () => out({ open: true })
  if (dc.readyState === 'open') out({ open: true })
  dc.onmessage = (ev) => {
    const data = ev.data
    if (typeof data === 'string') return
    dc.send(data)
    echoed += data.length
    out({ echoed })
  }
}
pc.ondatachannel = (ev) => wire(ev.channel)

const gathered = async () => {
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 5000)
      pc.iceGatheringStateChange.subscribe((s) => { if (s === 'complete') { clearTimeout(t); resolve() } })
    })
  }
  return pc.localDescription.sdp
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  try {
    const m = JSON.parse(line)
    if (m.offer === true) {
      wire(pc.createDataChannel('data'))
      await pc.setLocalDescription(await pc.createOffer())
      out({ type: 'offer', sdp: await gathered() })
    } else if (typeof m.offer === 'string') {
      await pc.setRemoteDescription({ type: 'offer', sdp: m.offer })
      await pc.setLocalDescription(await pc.createAnswer())
      out({ type: 'answer', sdp: await gathered() })
    } else if (typeof m.answer === 'string') {
      await pc.setRemoteDescription({ type: 'answer', sdp: m.answer })
    }
  } catch (e) {
    out({ error: String(e?.stack ?? e) })
  }
})
rl.on('close', async () => { await pc.close(); process.exit(0) })
