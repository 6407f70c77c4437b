//! Which local addresses a peer connection binds.
//!
//! webrtc-rs expands the wildcard `0.0.0.0` into one socket per usable interface and
//! skips loopback, so on a host whose only interface is loopback (a network namespace,
//! a test sandbox, a container without a network) our offers and answers carried no
//! candidate at all, whatever `include_loopback` said. A browser answering such an offer
//! has nothing to check: it holds its answer until its ICE gathering has run every phase
//! (about 120 ms on loopback), where a candidate it can check lets it stop gathering
//! once the check succeeds (patches/PATCH.md, fourth patch). On such a host the wildcard
//! is replaced by `127.0.0.1:0`; anywhere else the configured addresses are kept.

use std::net::Ipv4Addr;

/// The wildcard a peer binds by default.
const WILDCARD: &str = "0.0.0.0:0";

/// The addresses to bind: `configured`, unless it is the bare wildcard, loopback
/// candidates are wanted, and this host has no IPv4 interface a remote could reach.
pub(crate) fn bind_addrs(configured: &[String], include_loopback: bool) -> Vec<String> {
    choose(configured, include_loopback, local_ipv4s().as_deref())
}

/// `bind_addrs` with the host's up IPv4 addresses given (`None`: they could not be read,
/// so nothing is changed).
fn choose(configured: &[String], include_loopback: bool, up: Option<&[Ipv4Addr]>) -> Vec<String> {
    let bare_wildcard = configured.len() == 1 && configured[0] == WILDCARD;
    let loopback_only = up.is_some_and(|up| !up.iter().any(|ip| reachable(*ip)));
    if include_loopback && bare_wildcard && loopback_only {
        vec!["127.0.0.1:0".to_owned()]
    } else {
        configured.to_vec()
    }
}

/// An address webrtc-rs would turn into a host candidate (its own rule).
fn reachable(ip: Ipv4Addr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified() && !ip.is_link_local()
}

/// The IPv4 addresses of the interfaces that are up, or `None` if they cannot be read.
fn local_ipv4s() -> Option<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        let up = ifa.ifa_flags & libc::IFF_UP as libc::c_uint != 0;
        if up && !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points at a sockaddr of family sa_family.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wild() -> Vec<String> {
        vec![WILDCARD.to_owned()]
    }

    #[test]
    fn a_loopback_only_host_binds_loopback() {
        let lo = [Ipv4Addr::LOCALHOST];
        assert_eq!(choose(&wild(), true, Some(&lo)), vec!["127.0.0.1:0"]);
        // No interface up at all is loopback-only too.
        assert_eq!(choose(&wild(), true, Some(&[])), vec!["127.0.0.1:0"]);
        // A link-local address is no more reachable than loopback.
        let ll = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(169, 254, 1, 2)];
        assert_eq!(choose(&wild(), true, Some(&ll)), vec!["127.0.0.1:0"]);
    }

    #[test]
    fn anything_else_is_left_as_configured() {
        let lan = [Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 0, 0, 7)];
        assert_eq!(choose(&wild(), true, Some(&lan)), wild());
        let lo = [Ipv4Addr::LOCALHOST];
        assert_eq!(choose(&wild(), false, Some(&lo)), wild());
        assert_eq!(choose(&wild(), true, None), wild());
        let two = vec![WILDCARD.to_owned(), "127.0.0.1:0".to_owned()];
        assert_eq!(choose(&two, true, Some(&lo)), two);
        let fixed = vec!["192.0.2.1:0".to_owned()];
        assert_eq!(choose(&fixed, true, Some(&lo)), fixed);
    }

    #[test]
    fn this_host_reports_its_loopback() {
        let up = local_ipv4s().expect("getifaddrs");
        assert!(up.contains(&Ipv4Addr::LOCALHOST), "{up:?}");
    }
}
