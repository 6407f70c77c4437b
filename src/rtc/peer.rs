//! One WebRTC peer connection carrying GenosRTC's single data channel (§5).
//!
//! GenosRTC does not trickle: a description is sent once ICE gathering completes, or
//! after at most 5 s. The offerer creates the one ordered, reliable channel `"data"`;
//! the answerer adopts whatever arrives. Remote `.local` (mDNS) candidates are queried,
//! never gathered. Every frame GenosRTC sends is at most 16 KiB (plus its 15-byte
//! header, §6), so the daemon advertises a 64 KiB SCTP maximum (see [`MAX_MESSAGE_SIZE`]).

use bytes::{Bytes, BytesMut};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::configuration::setting_engine::{
    SctpMaxMessageSize, SettingEngineBuilder,
};
use rtc::peer_connection::transport::RTCDtlsRole;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState, RTCSessionDescription,
};

pub const CHANNEL_LABEL: &str = "data";

/// The SCTP maximum message size we advertise. The association uses the smaller of
/// both sides' values, and webrtc-rs allocates (and zero-fills) a reassembly buffer of
/// that size per connection: 256 KiB (what browsers advertise) costs ≈0.45 MB per peer,
/// 64 KiB ≈0.25 MB (rust-stack.md §6). Our value only bounds what the remote may send
/// us, and GenosRTC never sends more than one 16 KiB frame (16,384 bytes, header
/// included) per data-channel message, so 64 KiB leaves four times the room needed.
pub const MAX_MESSAGE_SIZE: u32 = 64 * 1024;

/// Bytes one data channel may have sent and not yet had acknowledged before `send`
/// waits (SEND_WINDOW_BYTES). The receiver's socket must hold a whole window with room
/// to spare: Chromium reads each link through a UDP socket with a 128 KiB budget
/// (`ss -uam`: rb131072), which loopback datagrams of ~1.2 KB fill at about 50. With
/// 64 KiB in flight the harness saw drops in most 10k-node catch-ups, each repaired only
/// by SCTP's retransmission timer (220 ms, rtc-sctp patch); with 16–32 KiB none, and
/// the same median delivery (BENCHMARKS.md). A 2 MiB window once turned one lost packet
/// into rounds of 1, 2, 4, 8, 16 s.
pub const DEFAULT_SEND_WINDOW: usize = 32 << 10;

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub ice_servers: Vec<RTCIceServer>,
    /// Longest wait for ICE gathering before the description goes out anyway.
    pub gather_timeout: Duration,
    pub max_message_size: u32,
    /// Local UDP addresses to gather on, e.g. `0.0.0.0:0`.
    pub udp_addrs: Vec<String>,
    /// Offer loopback candidates (tests and single-host setups).
    pub include_loopback: bool,
    /// How long a peer-reflexive pair must wait before it may be nominated. Browsers
    /// hide their host addresses behind mDNS names, so the pair that works is often
    /// learned as peer-reflexive; waiting for a better one only delays the connection.
    pub prflx_wait: Duration,
    /// Resolve browsers' `.local` host candidates by mDNS (QueryOnly) where this host
    /// can do multicast; [`mdns_mode`] decides.
    pub mdns: MulticastDnsMode,
    /// Bytes a data channel may hold unacknowledged before `send` waits: the pace of
    /// every send ([`DEFAULT_SEND_WINDOW`]). webrtc's default is unbounded, which would
    /// also let a peer that stopped reading grow our memory without limit; with a
    /// bound, its sends stall and the link drops it.
    pub send_buffer_limit: usize,
}

/// QueryOnly where a multicast socket can be opened, Disabled elsewhere (a sandbox with
/// only a loopback interface has no multicast route, and webrtc then cannot even build
/// a peer connection). Probed once per process.
pub fn mdns_mode() -> MulticastDnsMode {
    static MODE: std::sync::OnceLock<MulticastDnsMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
            s.join_multicast_v4(
                &std::net::Ipv4Addr::new(224, 0, 0, 251),
                &std::net::Ipv4Addr::UNSPECIFIED,
            )
        });
        match probe {
            Ok(()) => MulticastDnsMode::QueryOnly,
            Err(e) => {
                tracing::warn!(error = %e, "no multicast here: mDNS (.local) candidates cannot be resolved");
                MulticastDnsMode::Disabled
            }
        }
    })
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            gather_timeout: Duration::from_secs(5),
            max_message_size: MAX_MESSAGE_SIZE,
            udp_addrs: vec!["0.0.0.0:0".into()],
            include_loopback: false,
            prflx_wait: Duration::ZERO,
            mdns: mdns_mode(),
            send_buffer_limit: DEFAULT_SEND_WINDOW,
        }
    }
}

#[derive(Debug)]
pub enum PeerEvent {
    /// The data channel opened: the peer has joined.
    Open,
    Message(Bytes),
    /// The channel or the connection closed or failed: the peer has left.
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("webrtc: {0}")]
    Webrtc(String),
    #[error("no local description after gathering")]
    NoDescription,
    #[error("the data channel is not open")]
    NotOpen,
}

fn webrtc_err(e: impl std::fmt::Display) -> PeerError {
    PeerError::Webrtc(e.to_string())
}

struct Handler {
    gathered: Arc<Notify>,
    events: mpsc::Sender<PeerEvent>,
    channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        // GenosRTC treats `disconnected` as fatal too: there is no grace for ICE recovery.
        if matches!(
            state,
            RTCPeerConnectionState::Disconnected
                | RTCPeerConnectionState::Failed
                | RTCPeerConnectionState::Closed
        ) {
            let _ = self.events.try_send(PeerEvent::Closed);
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(dc.clone());
        tokio::spawn(pump(dc, self.events.clone()));
    }
}

/// Forwards channel events; awaiting the bounded queue pushes back on SCTP.
async fn pump(dc: Arc<dyn DataChannel>, events: mpsc::Sender<PeerEvent>) {
    while let Some(ev) = dc.poll().await {
        let out = match ev {
            DataChannelEvent::OnOpen => PeerEvent::Open,
            DataChannelEvent::OnMessage(m) => PeerEvent::Message(m.data.freeze()),
            DataChannelEvent::OnClose => {
                let _ = events.send(PeerEvent::Closed).await;
                return;
            }
            _ => continue,
        };
        if events.send(out).await.is_err() {
            return;
        }
    }
    let _ = events.send(PeerEvent::Closed).await;
}

/// A peer connection and its data channel.
pub struct Peer {
    pc: Box<dyn PeerConnection>,
    channel: Arc<Mutex<Option<Arc<dyn DataChannel>>>>,
    gathered: Arc<Notify>,
    gather_timeout: Duration,
}

impl Peer {
    async fn build(
        cfg: &PeerConfig,
    ) -> Result<(Self, mpsc::Sender<PeerEvent>, mpsc::Receiver<PeerEvent>), PeerError> {
        let (tx, rx) = mpsc::channel(256);
        let gathered = Arc::new(Notify::new());
        let channel = Arc::new(Mutex::new(None));
        let handler = Arc::new(Handler {
            gathered: gathered.clone(),
            events: tx.clone(),
            channel: channel.clone(),
        });
        let settings = SettingEngineBuilder::new()
            .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(cfg.max_message_size))
            .with_multicast_dns_mode(cfg.mdns)
            .with_include_loopback_candidate(cfg.include_loopback)
            .with_prflx_acceptance_min_wait(Some(cfg.prflx_wait))
            // Answering, we take the DTLS server's side (`setup:passive`), so the offerer
            // (a browser) sends the ClientHello once its ICE is up. As the client, our
            // ClientHello waited 147–420 ms for a Chromium server's reply in the harness,
            // against 13–60 ms from its answer to an open channel when it is the client.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .build();
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(cfg.ice_servers.clone())
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_runtime(super::udp::NoGroRuntime::shared())
            .with_udp_addrs(super::ifaces::bind_addrs(
                &cfg.udp_addrs,
                cfg.include_loopback,
            ))
            .with_data_channel_send_buffer_limit(cfg.send_buffer_limit)
            .build()
            .await
            .map_err(webrtc_err)?;
        Ok((
            Self {
                pc: Box::new(pc),
                channel,
                gathered,
                gather_timeout: cfg.gather_timeout,
            },
            tx,
            rx,
        ))
    }

    /// Creates the offering side; returns it with the SDP to send.
    pub async fn offer(
        cfg: &PeerConfig,
    ) -> Result<(Self, mpsc::Receiver<PeerEvent>, String), PeerError> {
        let (peer, tx, events) = Self::build(cfg).await?;
        let dc = peer
            .pc
            .create_data_channel(CHANNEL_LABEL, None)
            .await
            .map_err(webrtc_err)?;
        *peer.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(dc.clone());
        tokio::spawn(pump(dc, tx));
        let offer = peer.pc.create_offer(None).await.map_err(webrtc_err)?;
        peer.pc
            .set_local_description(offer)
            .await
            .map_err(webrtc_err)?;
        let sdp = peer.gathered_sdp().await?;
        Ok((peer, events, sdp))
    }

    /// Creates the answering side for a remote offer; returns it with the answer SDP.
    pub async fn answer(
        cfg: &PeerConfig,
        offer_sdp: &str,
    ) -> Result<(Self, mpsc::Receiver<PeerEvent>, String), PeerError> {
        let (peer, _, rx) = Self::build(cfg).await?;
        let offer = RTCSessionDescription::offer(offer_sdp.to_owned()).map_err(webrtc_err)?;
        peer.pc
            .set_remote_description(offer)
            .await
            .map_err(webrtc_err)?;
        let answer = peer.pc.create_answer(None).await.map_err(webrtc_err)?;
        peer.pc
            .set_local_description(answer)
            .await
            .map_err(webrtc_err)?;
        let sdp = peer.gathered_sdp().await?;
        Ok((peer, rx, sdp))
    }

    /// Completes an offer with the remote answer.
    pub async fn accept_answer(&self, answer_sdp: &str) -> Result<(), PeerError> {
        let answer = RTCSessionDescription::answer(answer_sdp.to_owned()).map_err(webrtc_err)?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(webrtc_err)
    }

    /// The local description once gathering completed (or timed out), without the
    /// trickle option, as GenosRTC sends it.
    async fn gathered_sdp(&self) -> Result<String, PeerError> {
        let _ = tokio::time::timeout(self.gather_timeout, self.gathered.notified()).await;
        let desc = self
            .pc
            .local_description()
            .await
            .ok_or(PeerError::NoDescription)?;
        Ok(desc
            .sdp
            .lines()
            .filter(|l| l.trim() != "a=ice-options:trickle")
            .map(|l| format!("{l}\r\n"))
            .collect())
    }

    /// Sends one frame (at most 16 KiB) as a binary message.
    pub async fn send(&self, frame: &[u8]) -> Result<(), PeerError> {
        let dc = self
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(PeerError::NotOpen)?;
        dc.send(BytesMut::from(frame)).await.map_err(webrtc_err)
    }

    /// Bytes handed to the channel that the remote's SCTP has not acknowledged yet
    /// (queued or in flight); 0 once it has everything we sent. `None` without an
    /// open channel.
    pub async fn unacknowledged(&self) -> Option<usize> {
        let dc = self
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        dc.outstanding_bytes().await.ok()
    }

    /// Closes the channel and the connection, releasing their sockets and tasks.
    pub async fn close(&self) {
        let dc = self
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(dc) = dc {
            let _ = dc.close().await;
        }
        let _ = self.pc.close().await;
    }
}
