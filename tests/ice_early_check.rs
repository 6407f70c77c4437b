//! RFC 8445 §7.3 (RFC 5245 §7.2): an offerer must answer a connectivity check that
//! reaches it before the answer does, with no need of the peer's password. A browser
//! answering our offer checks our candidates at once and holds its answer until a check
//! has succeeded or its ICE gathering has run every phase; rtc-ice dropped those checks
//! (patches/PATCH.md, fourth patch). Here a hand-built STUN Binding request, keyed with
//! the ufrag and password of a real offer of ours, must get a success response that
//! proves our password and reports the sender's address, while one naming another ufrag
//! or keyed with another password gets none.

use genosdb_fallback::rtc::peer::{Peer, PeerConfig};
use hmac::{Hmac, Mac};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

const COOKIE: u32 = 0x2112_A442;

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn set_len(msg: &mut [u8], attrs_len: usize) {
    msg[2..4].copy_from_slice(&(attrs_len as u16).to_be_bytes());
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A Binding request as an ICE agent sends it: USERNAME, PRIORITY, ICE-CONTROLLED,
/// MESSAGE-INTEGRITY keyed with `key`, FINGERPRINT.
fn binding_request(txid: [u8; 12], username: &str, key: &str) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&COOKIE.to_be_bytes());
    m.extend_from_slice(&txid);
    attr(&mut m, 0x0006, username.as_bytes());
    attr(&mut m, 0x0024, &1_845_501_695u32.to_be_bytes());
    attr(&mut m, 0x8029, &7u64.to_be_bytes());
    let before_mi = m.len();
    set_len(&mut m, before_mi - 20 + 24);
    let mi = hmac_sha1(key.as_bytes(), &m);
    attr(&mut m, 0x0008, &mi);
    let before_fp = m.len();
    set_len(&mut m, before_fp - 20 + 8);
    let fp = crc32fast::hash(&m) ^ 0x5354_554E;
    attr(&mut m, 0x8028, &fp.to_be_bytes());
    m
}

struct Response {
    class_success: bool,
    txid: [u8; 12],
    mapped: Option<SocketAddr>,
    integrity_ok: bool,
}

fn parse_response(b: &[u8], key: &str) -> Response {
    assert!(b.len() >= 20, "short STUN message");
    let kind = u16::from_be_bytes([b[0], b[1]]);
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&b[8..20]);
    let (mut mapped, mut integrity_ok) = (None, false);
    let mut at = 20;
    while at + 4 <= b.len() {
        let t = u16::from_be_bytes([b[at], b[at + 1]]);
        let len = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
        let v = &b[at + 4..at + 4 + len];
        match t {
            0x0020 if v[1] == 0x01 => {
                let port = u16::from_be_bytes([v[2], v[3]]) ^ (COOKIE >> 16) as u16;
                let ip = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ COOKIE;
                mapped = Some(SocketAddr::from((std::net::Ipv4Addr::from(ip), port)));
            }
            0x0008 => {
                let mut signed = b[..at].to_vec();
                set_len(&mut signed, at - 20 + 24);
                integrity_ok = hmac_sha1(key.as_bytes(), &signed) == v;
            }
            _ => {}
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    Response {
        class_success: kind == 0x0101,
        txid,
        mapped,
        integrity_ok,
    }
}

fn sdp_value<'a>(sdp: &'a str, key: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in the offer:\n{sdp}"))
        .trim()
}

#[tokio::test]
async fn an_offer_answers_checks_that_come_before_the_answer() {
    let cfg = PeerConfig {
        udp_addrs: vec!["127.0.0.1:0".into()],
        include_loopback: true,
        gather_timeout: Duration::from_secs(2),
        ..PeerConfig::default()
    };
    let (peer, _events, sdp) = Peer::offer(&cfg).await.expect("offer");
    let ufrag = sdp_value(&sdp, "a=ice-ufrag:");
    let pwd = sdp_value(&sdp, "a=ice-pwd:");
    let target: SocketAddr = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| {
            let f: Vec<&str> = c.split_whitespace().collect();
            (f.get(2) == Some(&"udp") && f.get(4) == Some(&"127.0.0.1"))
                .then(|| format!("127.0.0.1:{}", f[5]).parse().ok())
                .flatten()
        })
        .next()
        .unwrap_or_else(|| panic!("the offer has no loopback UDP candidate:\n{sdp}"));

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let good = [1u8; 12];
    // Refused first: another ufrag, then another password. UDP on loopback keeps the
    // order, and the agent answers in the order it reads, so if either were answered its
    // response would come before the good one's.
    let wrong_ufrag = binding_request([2u8; 12], &format!("{ufrag}x:peer"), pwd);
    let wrong_key = binding_request([3u8; 12], &format!("{ufrag}:peer"), "not-the-password");
    for m in [&wrong_ufrag, &wrong_key] {
        sock.send_to(m, target).await.unwrap();
    }
    let mut buf = [0u8; 1500];
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Retransmitted like a real agent's check, until the answer to it comes.
            sock.send_to(
                &binding_request(good, &format!("{ufrag}:peer"), pwd),
                target,
            )
            .await
            .unwrap();
            if let Ok(Ok((n, from))) =
                tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
            {
                return (buf[..n].to_vec(), from);
            }
        }
    })
    .await
    .expect("no response to a check sent before the answer");
    let (bytes, from) = reply;
    assert_eq!(
        from, target,
        "the response comes from the candidate checked"
    );
    let r = parse_response(&bytes, pwd);
    assert_eq!(
        r.txid, good,
        "only the check with our ufrag and password is answered"
    );
    assert!(r.class_success, "a Binding success response");
    assert!(r.integrity_ok, "signed with the offer's ice-pwd");
    assert_eq!(
        r.mapped,
        Some(me),
        "XOR-MAPPED-ADDRESS is the sender's address"
    );
    peer.close().await;
}
