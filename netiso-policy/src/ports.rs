//! Port specifications (`80/tcp`, `8000-8100/udp`, `tcp`, `icmp`) and the
//! set arithmetic the linter needs.
use std::fmt;

use netiso_common::proto;

/// A protocol a rule can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP for IPv4 and ICMPv6: people write "icmp" and mean ping on both.
    Icmp,
    /// ICMP for IPv4 only.
    Icmpv4,
    /// ICMPv6 only.
    Icmpv6,
}

/// Protocol numbers rules can name (every `Proto::numbers` is drawn from these).
pub const NAMED_NUMBERS: [u8; 4] = [proto::ICMP, proto::TCP, proto::UDP, proto::ICMPV6];

impl Proto {
    pub const ALL: [Proto; 5] = [
        Proto::Tcp,
        Proto::Udp,
        Proto::Icmp,
        Proto::Icmpv4,
        Proto::Icmpv6,
    ];

    /// Protocol numbers as used in policy keys.
    pub const fn numbers(self) -> &'static [u8] {
        match self {
            Self::Tcp => &[proto::TCP],
            Self::Udp => &[proto::UDP],
            Self::Icmp => &[proto::ICMP, proto::ICMPV6],
            Self::Icmpv4 => &[proto::ICMP],
            Self::Icmpv6 => &[proto::ICMPV6],
        }
    }

    /// Whether the protocol has ports a rule can name.
    pub const fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Icmpv4 => "icmpv4",
            Self::Icmpv6 => "icmpv6",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

/// One entry of a rule's `ports` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// Every port of a protocol (`tcp`, `udp`, `icmp`).
    Proto(Proto),
    /// `lo..=hi` of TCP or UDP; `80/tcp` is `80-80`.
    Range { proto: Proto, lo: u16, hi: u16 },
}

impl PortSpec {
    pub fn proto(self) -> Proto {
        match self {
            Self::Proto(p) | Self::Range { proto: p, .. } => p,
        }
    }

    /// Whether a packet of protocol number `proto` to `port` is covered.
    pub fn covers(self, proto: u8, port: u16) -> bool {
        match self {
            Self::Proto(p) => p.numbers().contains(&proto),
            Self::Range { proto: p, lo, hi } => {
                p.numbers().contains(&proto) && (lo..=hi).contains(&port)
            }
        }
    }

    /// Number of exact-port keys this spec needs per identity pair.
    pub fn port_count(self) -> usize {
        match self {
            Self::Proto(_) => 0,
            Self::Range { lo, hi, .. } => usize::from(hi - lo) + 1,
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Proto(p) => f.write_str(p.as_str()),
            Self::Range { proto, lo, hi } if lo == hi => write!(f, "{lo}/{}", proto.as_str()),
            Self::Range { proto, lo, hi } => write!(f, "{lo}-{hi}/{}", proto.as_str()),
        }
    }
}

/// Why a port string was rejected; turned into a diagnostic by the parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortError {
    /// `true` for out-of-range or reversed ranges (`port-range`), `false`
    /// for text that is not a port at all (`bad-port`).
    pub range: bool,
    pub message: String,
    pub label: String,
    pub help: String,
}

const EXPECTED: &str = "expected N/tcp, N/udp, A-B/tcp, A-B/udp, tcp, udp, icmp, icmpv4, icmpv6 \
     or any (for example \"443/tcp\")";

fn bad(message: String, label: &str, help: String) -> PortError {
    PortError {
        range: false,
        message,
        label: label.to_string(),
        help,
    }
}

pub fn parse_port(text: &str) -> Result<PortSpec, PortError> {
    let bad_port = || format!("bad port \"{text}\"");
    if let Some(p) = Proto::parse(text) {
        return Ok(PortSpec::Proto(p));
    }
    let Some((ports, proto_text)) = text.split_once('/') else {
        let help = if parse_number(text).is_some() || text.contains('-') {
            format!("add the protocol, for example \"{text}/tcp\"; {EXPECTED}")
        } else if text == "*" {
            "write \"any\" (or omit `ports`) to match every protocol and port".to_string()
        } else {
            EXPECTED.to_string()
        };
        return Err(bad(bad_port(), "no protocol", help));
    };
    let Some(proto) = Proto::parse(proto_text) else {
        let guess = crate::diagnostic::did_you_mean(proto_text, ["tcp", "udp"]);
        let help = match guess {
            Some(g) => format!("did you mean \"{ports}/{g}\"? {EXPECTED}"),
            None => EXPECTED.to_string(),
        };
        return Err(bad(
            bad_port(),
            &format!("unknown protocol \"{proto_text}\""),
            help,
        ));
    };
    if !proto.has_ports() {
        return Err(bad(
            bad_port(),
            &format!("{} has no ports", proto.as_str()),
            format!("write \"{}\" on its own", proto.as_str()),
        ));
    }
    let (lo_text, hi_text) = ports.split_once('-').unwrap_or((ports, ports));
    let (Some(lo), Some(hi)) = (parse_number(lo_text), parse_number(hi_text)) else {
        return Err(bad(bad_port(), "not a port number", EXPECTED.to_string()));
    };
    let proto_name = proto.as_str();
    for n in [lo, hi] {
        if !(1..=65535).contains(&n) {
            return Err(PortError {
                range: true,
                message: format!("port {n} is out of range in \"{text}\""),
                label: "ports run from 1 to 65535".to_string(),
                help: format!("write \"{proto_name}\" to mean every {proto_name} port"),
            });
        }
    }
    if lo > hi {
        return Err(PortError {
            range: true,
            message: format!("port range \"{text}\" is reversed"),
            label: "the first port must not be greater than the last".to_string(),
            help: format!("write \"{hi}-{lo}/{proto_name}\""),
        });
    }
    // Both fit: checked against 65535 above.
    Ok(PortSpec::Range {
        proto,
        lo: lo as u16,
        hi: hi as u16,
    })
}

/// Digits only (no sign, no spaces); saturates so huge numbers still read
/// as "out of range" rather than "not a number".
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u32, |acc, b| {
        acc.saturating_mul(10).saturating_add(u32::from(b - b'0'))
    }))
}

/// A set of (protocol, port) a rule covers, for deciding whether one rule
/// hides another. Protocols are kept as numbers, since `icmp` covers both
/// `icmpv4` and `icmpv6`.
#[derive(Clone, Debug, Default)]
pub struct PortSet {
    /// Every protocol and port (a rule without `ports`).
    pub any: bool,
    whole: Vec<u8>,
    ranges: Vec<(u8, u16, u16)>,
}

impl PortSet {
    pub fn add(&mut self, ports: Option<&[PortSpec]>) {
        match ports {
            None => self.any = true,
            Some(specs) => {
                for spec in specs {
                    match *spec {
                        PortSpec::Proto(p) => self.whole.extend_from_slice(p.numbers()),
                        PortSpec::Range { proto, lo, hi } => {
                            for &n in proto.numbers() {
                                self.ranges.push((n, lo, hi));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether every (protocol, port) of `ports` is in this set.
    pub fn contains(&self, ports: Option<&[PortSpec]>) -> bool {
        if self.any {
            return true;
        }
        let Some(specs) = ports else {
            return false;
        };
        specs.iter().all(|spec| match *spec {
            PortSpec::Proto(p) => p.numbers().iter().all(|n| self.whole.contains(n)),
            PortSpec::Range { proto, lo, hi } => proto
                .numbers()
                .iter()
                .all(|&n| self.whole.contains(&n) || self.ranges_cover(n, lo, hi)),
        })
    }

    fn ranges_cover(&self, proto: u8, lo: u16, hi: u16) -> bool {
        let mut ranges: Vec<(u16, u16)> = self
            .ranges
            .iter()
            .filter(|r| r.0 == proto)
            .map(|r| (r.1, r.2))
            .collect();
        ranges.sort_unstable();
        // Walk the sorted ranges, extending the covered prefix from `lo`.
        let mut next = u32::from(lo);
        for (a, b) in ranges {
            if u32::from(a) > next {
                break;
            }
            next = next.max(u32::from(b) + 1);
            if next > u32::from(hi) {
                return true;
            }
        }
        false
    }
}

/// Whether two port lists share some (protocol, port).
pub fn overlap(a: Option<&[PortSpec]>, b: Option<&[PortSpec]>) -> bool {
    let (Some(x), Some(y)) = (a, b) else {
        return true;
    };
    x.iter().any(|s| {
        y.iter().any(|t| {
            s.proto()
                .numbers()
                .iter()
                .any(|n| t.proto().numbers().contains(n))
                && match (*s, *t) {
                    (
                        PortSpec::Range { lo, hi, .. },
                        PortSpec::Range {
                            lo: lo2, hi: hi2, ..
                        },
                    ) => lo <= hi2 && lo2 <= hi,
                    _ => true,
                }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(proto: Proto, lo: u16, hi: u16) -> PortSpec {
        PortSpec::Range { proto, lo, hi }
    }

    impl PortSet {
        fn of(ports: Option<&[PortSpec]>) -> Self {
            let mut set = Self::default();
            set.add(ports);
            set
        }
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_port("5432/tcp"), Ok(range(Proto::Tcp, 5432, 5432)));
        assert_eq!(parse_port("53/udp"), Ok(range(Proto::Udp, 53, 53)));
        assert_eq!(
            parse_port("8000-8100/tcp"),
            Ok(range(Proto::Tcp, 8000, 8100))
        );
        assert_eq!(parse_port("1-65535/UDP"), Ok(range(Proto::Udp, 1, 65535)));
        assert_eq!(parse_port("icmp"), Ok(PortSpec::Proto(Proto::Icmp)));
        assert_eq!(parse_port("tcp"), Ok(PortSpec::Proto(Proto::Tcp)));
        assert_eq!(parse_port("udp"), Ok(PortSpec::Proto(Proto::Udp)));
        assert_eq!(range(Proto::Tcp, 80, 80).to_string(), "80/tcp");
        assert_eq!(range(Proto::Udp, 1, 9).to_string(), "1-9/udp");
    }

    #[test]
    fn rejects_with_hints() {
        let e = parse_port("80/tcpp").unwrap_err();
        assert!(!e.range);
        assert_eq!(e.label, "unknown protocol \"tcpp\"");
        assert!(e.help.starts_with("did you mean \"80/tcp\"?"), "{}", e.help);
        let e = parse_port("80").unwrap_err();
        assert!(e.help.contains("\"80/tcp\""), "{}", e.help);
        assert!(parse_port("80/icmp")
            .unwrap_err()
            .label
            .contains("no ports"));
        assert!(parse_port("*").unwrap_err().help.contains("\"any\""));
        assert_eq!(parse_port("ICMPv6"), Ok(PortSpec::Proto(Proto::Icmpv6)));
        assert!(!parse_port("8o/tcp").unwrap_err().range);
        assert!(!parse_port("-5/tcp").unwrap_err().range);
        let e = parse_port("0/tcp").unwrap_err();
        assert!(e.range && e.message.contains("port 0 is out of range"));
        let e = parse_port("99999999999/udp").unwrap_err();
        assert!(e.range, "{e:?}");
        let e = parse_port("8100-8000/tcp").unwrap_err();
        assert!(e.range && e.help == "write \"8000-8100/tcp\"", "{e:?}");
    }

    #[test]
    fn coverage() {
        assert!(range(Proto::Tcp, 80, 90).covers(proto::TCP, 90));
        assert!(!range(Proto::Tcp, 80, 90).covers(proto::UDP, 85));
        assert!(PortSpec::Proto(Proto::Icmp).covers(proto::ICMPV6, 0));
        let set = PortSet::of(Some(&[
            range(Proto::Tcp, 1, 100),
            range(Proto::Tcp, 90, 200),
        ]));
        assert!(set.contains(Some(&[range(Proto::Tcp, 50, 200)])));
        assert!(!set.contains(Some(&[range(Proto::Tcp, 50, 201)])));
        assert!(!set.contains(Some(&[PortSpec::Proto(Proto::Tcp)])));
        assert!(!set.contains(None));
        let icmp = PortSet::of(Some(&[PortSpec::Proto(Proto::Icmp)]));
        assert!(icmp.contains(Some(&[PortSpec::Proto(Proto::Icmpv6)])));
        let v4 = PortSet::of(Some(&[PortSpec::Proto(Proto::Icmpv4)]));
        assert!(!v4.contains(Some(&[PortSpec::Proto(Proto::Icmp)])));
        let whole = PortSet::of(Some(&[PortSpec::Proto(Proto::Udp)]));
        assert!(whole.contains(Some(&[range(Proto::Udp, 1, 65535)])));
        assert!(PortSet::of(None).contains(None));
    }
}
