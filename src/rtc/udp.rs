//! webrtc-rs's tokio runtime, with UDP receive coalescing (GRO) turned off.
//!
//! webrtc-rs 0.21 turns on UDP GRO on every socket it opens (through quinn-udp) and
//! then gives each socket a receive buffer that can hold the most the kernel may
//! coalesce: 64 datagrams of 1,500 bytes, 94 KiB, zero-filled, for the life of the
//! connection. A peer connection has a socket per local address (two on the daemon's
//! hosts), so that is 188 KiB per peer. The kernel only writes what a receive holds,
//! so most of it is never touched, but the allocator zero-fills it whenever it reuses
//! memory, and then it is resident: at 1,000 idle peers about 100 MB of the daemon's
//! resident memory were pages holding only zeros (BENCHMARKS.md, issue 19). A peer
//! sends the daemon a few small messages a second; there is nothing to coalesce. With
//! GRO off, webrtc-rs reads one datagram at a time into a 2,000-byte buffer, as it does
//! wherever the OS has no GRO. Sending (GSO) is unchanged.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// [`TokioRuntime`] in all but the UDP sockets it wraps: see the module's doc.
#[derive(Debug)]
pub struct NoGroRuntime(TokioRuntime);

impl NoGroRuntime {
    pub fn shared() -> Arc<dyn Runtime> {
        Arc::new(Self(TokioRuntime))
    }
}

impl Runtime for NoGroRuntime {
    #[track_caller]
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.0.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.0.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let inner = self.0.wrap_udp_socket(socket)?;
        // `inner` owns the socket now, so `fd` is open while we use it.
        gro_off(fd)?;
        Ok(Arc::new(NoGro(inner)))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.0.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.0.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.0.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.0.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.0.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.yield_now()
    }

    fn name(&self) -> &'static str {
        self.0.name()
    }
}

/// A socket that reports no receive coalescing, so webrtc-rs sizes its receive buffer
/// for one datagram.
struct NoGro(Arc<dyn AsyncUdpSocket>);

impl fmt::Debug for NoGro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NoGro").field(&self.0).finish()
    }
}

impl AsyncUdpSocket for NoGro {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.0.poll_send(cx, transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn max_gso_segments(&self) -> usize {
        self.0.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        1
    }
}

/// Turns UDP_GRO off again (quinn-udp turned it on): the kernel then never hands over
/// more than one datagram per receive. Where the OS has no GRO there is nothing to do.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn gro_off(fd: std::os::fd::RawFd) -> io::Result<()> {
    let off: libc::c_int = 0;
    // SAFETY: `fd` is an open UDP socket (owned by the wrapped socket), and the option
    // value is a c_int that lives for the duration of the call, with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        // A kernel without UDP_GRO (before 5.0) never coalesced either.
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(()),
            e => Err(e),
        },
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn gro_off(_fd: std::os::fd::RawFd) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's sockets report no GRO (so webrtc-rs gives them a one-datagram
    /// buffer), and the kernel agrees: a burst of datagrams arrives one per receive.
    #[tokio::test]
    async fn sockets_read_one_datagram_at_a_time() {
        let rt = NoGroRuntime(TokioRuntime);
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std_sock);
        let sock = rt.wrap_udp_socket(std_sock).unwrap();
        assert_eq!(sock.max_gro_segments(), 1);
        #[cfg(target_os = "linux")]
        {
            let mut on: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: reads one c_int option of an open socket into a c_int.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_UDP,
                    libc::UDP_GRO,
                    (&mut on as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!((rc, on), (0, 0), "UDP_GRO is off");
        }
        let _ = fd;
        let to = sock.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..8u8 {
            sender.send_to(&[i; 1200], to).unwrap();
        }
        let mut buf = vec![0u8; 64 * 1500];
        for i in 0..8u8 {
            let mut meta = [RecvMeta::default(); 1];
            let n = std::future::poll_fn(|cx| {
                let mut bufs = [IoSliceMut::new(&mut buf)];
                sock.poll_recv(cx, &mut bufs, &mut meta)
            })
            .await
            .unwrap();
            assert_eq!(n, 1);
            assert_eq!(meta[0].len, 1200, "datagram {i} arrived alone");
            assert_eq!(buf[0], i);
        }
    }
}
