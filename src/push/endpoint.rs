//! Where a push endpoint may point: public addresses only, so that registering a
//! subscription cannot turn the hub into a request proxy into the operator's own network.
//! Checked when a subscription is registered, and again on every connection the push client
//! opens (its resolver), so that a name that later resolves elsewhere (DNS rebinding) is
//! refused too. Tests allow `http://` on loopback (`WSKAFKA_PUSH_ALLOW_LOOPBACK`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an endpoint is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("push endpoint host {0:?} does not resolve")]
    Unresolved(String),
    #[error("push endpoint host {0:?} resolves to a private or reserved address ({1})")]
    Private(String, IpAddr),
    #[error("a push endpoint must be an https:// URL")]
    NotHttps,
}

/// Whether the hub may send to `ip`: a public address, or loopback where allowed.
pub fn allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    is_public(ip) || (allow_loopback && ip.is_loopback())
}

/// Whether `ip` is a public unicast address: none of the private, shared, loopback,
/// link-local, documentation, benchmarking, multicast or reserved ranges, nor an IPv6
/// address that embeds one of them.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        // Shared address space (carrier-grade NAT).
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking.
        || (a == 198 && (b == 18 || b == 19))
        // Reserved.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the IPv4 address it embeds.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10.
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        // Documentation 2001:db8::/32.
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        // IPv4-compatible and other addresses under ::/96.
        || s[..6] == [0, 0, 0, 0, 0, 0])
}

/// Checks where `endpoint` points: its scheme, and every address its host resolves to.
pub async fn check(endpoint: &url::Url, allow_loopback: bool) -> Result<(), Refused> {
    let host = endpoint.host_str().unwrap_or_default().to_string();
    let port = endpoint.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match endpoint.host() {
        Some(url::Host::Ipv4(ip)) => vec![ip.into()],
        Some(url::Host::Ipv6(ip)) => vec![ip.into()],
        _ => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| Refused::Unresolved(host.clone()))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refused::Unresolved(host));
    }
    if let Some(&ip) = addrs.iter().find(|&&ip| !allowed(ip, allow_loopback)) {
        return Err(Refused::Private(host, ip));
    }
    // Plain HTTP only to this machine, in tests.
    if endpoint.scheme() != "https" && !(allow_loopback && addrs.iter().all(IpAddr::is_loopback)) {
        return Err(Refused::NotHttps);
    }
    Ok(())
}

/// The push client's resolver: the system's, less the addresses the hub may not reach.
pub struct Guarded {
    pub allow_loopback: bool,
}

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allowed(a.ip(), allow_loopback))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(Refused::Unresolved(host)) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_allowed() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "ff02::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!is_public(ip), "{ip}");
            assert!(!allowed(ip, false), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "142.250.74.10",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(is_public(ip), "{ip}");
        }
        assert!(allowed("127.0.0.1".parse().unwrap(), true));
        assert!(allowed("::1".parse().unwrap(), true));
        assert!(!allowed("10.0.0.1".parse().unwrap(), true), "loopback only");
    }

    #[tokio::test]
    async fn endpoints_on_private_addresses_or_plain_http_are_refused() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(matches!(
            check(&url("https://10.0.0.1/push"), false).await,
            Err(Refused::Private(..))
        ));
        assert!(matches!(
            check(&url("https://[::1]:8443/push"), false).await,
            Err(Refused::Private(..))
        ));
        assert!(matches!(
            check(&url("https://localhost/push"), false).await,
            Err(Refused::Private(..))
        ));
        assert_eq!(
            check(&url("http://8.8.8.8/push"), true).await,
            Err(Refused::NotHttps)
        );
        assert_eq!(check(&url("http://127.0.0.1:9/push"), true).await, Ok(()));
        assert_eq!(check(&url("https://8.8.8.8/push"), false).await, Ok(()));
    }
}
