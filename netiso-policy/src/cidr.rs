//! Address blocks (`198.18.0.0/15`, `fd00::/8`) as rule peers, and the
//! longest-prefix entries the kernel's CIDR trie gets for them.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// One address block: an address with its host bits zero, and a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Why a block was rejected; the parser turns it into a diagnostic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError {
    pub message: String,
    pub label: String,
    pub help: String,
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// `addr` with every bit past `prefix_len` cleared.
fn masked(addr: IpAddr, prefix_len: u8) -> IpAddr {
    let w = u32::from(width(addr));
    let host = w - u32::from(prefix_len);
    let keep = if host >= 128 {
        0
    } else {
        (!0u128 >> (128 - w)) & !((1u128 << host) - 1)
    };
    let b = bits(addr) & keep;
    match addr {
        IpAddr::V4(_) => IpAddr::V4((b as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(b.into()),
    }
}

impl Cidr {
    /// Parses `ADDR/LEN`, or a bare address (a block of one address).
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let Ok(addr) = addr_text.trim().parse::<IpAddr>() else {
            return Err(CidrError {
                message: format!("bad address block \"{text}\""),
                label: format!("\"{addr_text}\" is not an IPv4 or IPv6 address"),
                help: "write an address block as ADDRESS/PREFIX, for example \
                       \"198.18.0.0/15\" or \"fd00::/8\""
                    .to_string(),
            });
        };
        let max = width(addr);
        let prefix_len = match len_text {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(CidrError {
                        message: format!("bad prefix length in \"{text}\""),
                        label: format!(
                        "the prefix length must be a number from 0 to {max} for an IPv{} address",
                        if addr.is_ipv4() { 4 } else { 6 }
                    ),
                        help: format!("for example \"{}/{}\"", masked(addr, max / 2), max / 2),
                    })
                }
            },
        };
        let network = masked(addr, prefix_len);
        if network != addr {
            return Err(CidrError {
                message: format!("address block \"{text}\" has host bits set"),
                label: format!("the last {} bits must be zero", max - prefix_len),
                help: format!("did you mean \"{network}/{prefix_len}\"?"),
            });
        }
        Ok(Self { addr, prefix_len })
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && masked(ip, self.prefix_len) == self.addr
    }

    /// Whether every address of `other` is in this block.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.is_ipv4() == self.is_ipv4()
            && other.prefix_len >= self.prefix_len
            && masked(other.addr, self.prefix_len) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A rule peer made of address blocks, minus some blocks inside them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrPeer {
    /// Sorted, deduplicated.
    pub cidrs: Vec<Cidr>,
    /// Sorted, deduplicated; each inside one of `cidrs` and smaller than it.
    pub except: Vec<Cidr>,
    /// Canonical text: `10.0.0.0/8, fd00::/8 except 10.1.0.0/16`. Rules
    /// that name the same blocks name the same peer.
    pub name: String,
}

impl CidrPeer {
    pub fn new(mut cidrs: Vec<Cidr>, mut except: Vec<Cidr>) -> Self {
        cidrs.sort();
        cidrs.dedup();
        except.sort();
        except.dedup();
        let join = |v: &[Cidr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut name = join(&cidrs);
        if !except.is_empty() {
            name.push_str(" except ");
            name.push_str(&join(&except));
        }
        Self {
            cidrs,
            except,
            name,
        }
    }

    /// Whether `ip` belongs to the peer: in one of its blocks and in none
    /// of its exceptions.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip)) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// An entry of the kernel's CIDR trie: addresses under this prefix that no
/// longer entry covers get `identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CidrEntry {
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub identity: u32,
    /// `netiso_common::defaults` bits of the identity (0: address blocks
    /// are not containers and have no defaults of their own).
    pub flags: u32,
}

/// For every block and exception of `peers`, the peers an address that
/// lands on that entry (its longest matching prefix) belongs to.
///
/// An address whose longest match is prefix P is inside a block B exactly
/// when B covers P (B is itself an entry, so it cannot be longer than P),
/// and likewise for exceptions: so membership is decided per entry.
/// An empty set means "no peer": the address is plain world.
pub fn memberships(peers: &[&CidrPeer]) -> BTreeMap<Cidr, BTreeSet<String>> {
    let prefixes: BTreeSet<Cidr> = peers
        .iter()
        .flat_map(|p| p.cidrs.iter().chain(&p.except))
        .copied()
        .collect();
    prefixes
        .into_iter()
        .map(|p| {
            let members = peers
                .iter()
                .filter(|q| {
                    q.cidrs.iter().any(|c| c.covers(&p)) && !q.except.iter().any(|e| e.covers(&p))
                })
                .map(|q| q.name.clone())
                .collect();
            (p, members)
        })
        .collect()
}

/// Longest-prefix match over `entries`, as the kernel's LPM trie does.
pub fn longest_match(entries: &[CidrEntry], ip: IpAddr) -> Option<&CidrEntry> {
    entries
        .iter()
        .filter(|e| {
            Cidr {
                addr: e.addr,
                prefix_len: e.prefix_len,
            }
            .contains(ip)
        })
        .max_by_key(|e| e.prefix_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn parses_and_checks_host_bits() {
        assert_eq!(c("198.18.0.0/15").prefix_len, 15);
        assert_eq!(c("198.18.0.5").prefix_len, 32);
        assert_eq!(c("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(c("::/0").prefix_len, 0);
        let e = Cidr::parse("198.18.0.5/15").unwrap_err();
        assert_eq!(e.help, "did you mean \"198.18.0.0/15\"?");
        let e = Cidr::parse("10.0.0.0/33").unwrap_err();
        assert!(e.label.contains("0 to 32"), "{e:?}");
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("fd00::1/129").is_err());
        assert!(Cidr::parse("fd00::1/64")
            .unwrap_err()
            .help
            .contains("fd00::/64"));
    }

    #[test]
    fn containment() {
        assert!(c("198.18.0.0/15").contains("198.19.255.255".parse().unwrap()));
        assert!(!c("198.18.0.0/15").contains("198.20.0.0".parse().unwrap()));
        assert!(!c("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(c("::/0").contains("::1".parse().unwrap()));
        assert!(c("10.0.0.0/8").covers(&c("10.1.0.0/16")));
        assert!(c("10.0.0.0/8").covers(&c("10.0.0.0/8")));
        assert!(!c("10.1.0.0/16").covers(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").covers(&c("fd00::/8")));
    }

    #[test]
    fn memberships_follow_the_longest_prefix() {
        let a = CidrPeer::new(vec![c("10.0.0.0/8")], vec![c("10.1.0.0/16")]);
        let b = CidrPeer::new(vec![c("10.1.2.0/24")], vec![]);
        assert_eq!(a.name, "10.0.0.0/8 except 10.1.0.0/16");
        let m = memberships(&[&a, &b]);
        let names = |s: &str| m[&c(s)].iter().cloned().collect::<Vec<_>>();
        assert_eq!(names("10.0.0.0/8"), std::slice::from_ref(&a.name));
        assert!(names("10.1.0.0/16").is_empty());
        assert_eq!(names("10.1.2.0/24"), std::slice::from_ref(&b.name));
        // An overlap gives the entry both peers.
        let wide = CidrPeer::new(vec![c("10.0.0.0/8")], vec![]);
        let m = memberships(&[&wide, &b]);
        assert_eq!(m[&c("10.1.2.0/24")].len(), 2);
    }
}
