//! Where requests may go: addresses of the machine itself and of private
//! networks (loopback, private, shared, link-local and so cloud metadata,
//! unique local, unspecified, multicast, documentation ranges) are refused
//! unless the connection lists the host under `allowPrivateHosts`. Names
//! are checked after DNS resolution, by the client's resolver, so a public
//! name that resolves to a private address is refused too; literal
//! addresses are checked before each request and each redirect.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why an address is not for flows to reach, if it is not.
pub(crate) fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address (cloud metadata lives there)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified address")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if (a, b, c) == (192, 0, 0) || (a, b) == (198, 18) || (a, b) == (198, 19) {
        Some("a special-purpose address")
    } else if ip.is_documentation() {
        Some("a documentation address")
    } else {
        None
    }
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a unique local (private) address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("a documentation address")
    } else if first == 0x0064 && ip.segments()[1] == 0xff9b {
        // NAT64: the IPv4 address inside decides.
        let s = ip.segments();
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        internal_v4(v4)
    } else {
        None
    }
}

/// A request refused because of where it would go.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) host: String,
    pub(crate) ip: IpAddr,
    pub(crate) why: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.host == self.ip.to_string() {
            format!("`{}`", self.host)
        } else {
            format!("`{}` resolves to {}, which", self.host, self.ip)
        };
        write!(
            f,
            "{at} is {}: requests to the machine itself and to private networks are refused unless the connection lists the host under `allowPrivateHosts`",
            self.why
        )
    }
}

impl std::error::Error for Refused {}

/// The hosts a client may reach on internal addresses.
#[derive(Clone, Default)]
pub(crate) struct Allowed(pub(crate) Arc<BTreeSet<String>>);

impl Allowed {
    fn allows(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.0.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Check a URL whose host is a literal address (names are checked when
    /// they are resolved).
    pub(crate) fn check_literal(&self, url: &url::Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        let host = url.host_str().unwrap_or_default();
        match internal(ip) {
            Some(why) if !self.allows(host) => Err(Refused {
                host: ip.to_string(),
                ip,
                why,
            }),
            _ => Ok(()),
        }
    }
}

/// The client's resolver: the system's, its answers checked.
pub(crate) struct GuardedResolver(pub(crate) Allowed);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if allowed.allows(&host) {
                let addrs: Addrs = Box::new(found.into_iter());
                return Ok(addrs);
            }
            // Every address must be public: a name with one public and one
            // private address could be made to connect to the private one.
            if let Some((a, why)) = found
                .iter()
                .find_map(|a| internal(a.ip()).map(|why| (a, why)))
            {
                let refused: Box<dyn std::error::Error + Send + Sync> = Box::new(Refused {
                    host,
                    ip: a.ip(),
                    why,
                });
                return Err(refused);
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// The refusal in an error's chain of sources, if that is what it is.
pub(crate) fn refusal<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_are_named_and_public_ones_pass() {
        for (ip, internal_) in [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("0.0.0.0", true),
            ("224.0.0.1", true),
            ("::1", true),
            ("::", true),
            ("fd00::1", true),
            ("fe80::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:10.0.0.1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("93.184.216.34", false),
            ("8.8.8.8", false),
            ("2606:4700::1111", false),
            ("::ffff:8.8.8.8", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(internal(ip).is_some(), internal_, "{ip}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_and_allowed_by_name() {
        let url = url::Url::parse("http://127.0.0.1:8080/x").unwrap();
        let none = Allowed::default();
        let e = none.check_literal(&url).unwrap_err().to_string();
        assert!(
            e.contains("`127.0.0.1` is a loopback address") && e.contains("allowPrivateHosts"),
            "{e}"
        );
        let some = Allowed(Arc::new(["127.0.0.1".to_owned()].into()));
        assert!(some.check_literal(&url).is_ok());
        let v6 = url::Url::parse("http://[::1]:8080/").unwrap();
        assert!(none.check_literal(&v6).is_err());
        let some6 = Allowed(Arc::new(["::1".to_owned()].into()));
        assert!(some6.check_literal(&v6).is_ok());
        let name = url::Url::parse("http://example.com/").unwrap();
        assert!(none.check_literal(&name).is_ok());
    }
}
