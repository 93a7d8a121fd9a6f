//! Reading DNS messages the datapath copies up for "egress by name": a
//! container's query ([`parse_query`]), the answer it gets back and the
//! addresses that answer teaches ([`parse_answer`]: the CNAME chain from
//! the question's name through the answer section only, so a resolver
//! cannot make a container learn names it did not ask about), and DNS over
//! TCP framing ([`TcpFramer`]). Pure: no I/O, never panics on any input.
//! Uses `hickory-proto` for the wire format and std; no other layer.
use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record};

/// How many CNAMEs an answer may chain before we stop following (a stub
/// resolver gives up much like this; glibc follows at most 16 hops in one
/// answer, real answers rarely chain more than 3).
pub const MAX_CHAIN: usize = 8;

/// A DNS question a container sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// Lowercase ASCII, labels joined with `.`, no trailing dot; the root
    /// is the empty string.
    pub name: String,
    pub qtype: u16,
}

/// What an answer teaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub id: u16,
    /// The question's name (as in [`Query::name`]).
    pub name: String,
    pub qtype: u16,
    /// The response code, EDNS extended bits included (0 NOERROR,
    /// 3 NXDOMAIN, …): up to 12 bits, hence `u16`.
    pub rcode: u16,
    /// Empty unless `rcode` is NOERROR.
    pub addresses: Vec<Learned>,
}

/// One address an answer teaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    pub addr: IpAddr,
    /// Seconds: the smallest TTL along the chain, this record's and the
    /// CNAMEs' that led to it (a TTL with the top bit set counts as 0,
    /// RFC 2181 §8).
    pub ttl: u32,
    /// The names from the question down the CNAME chain to this record's
    /// owner: `[question]` for a record of the question's own name,
    /// `[question, alias target, …]` otherwise.
    pub chain: Vec<String>,
}

/// The question of a query a container sent: exactly one question, QR=0,
/// opcode QUERY, a name made of hostname labels (see [`name_of`]); `None`
/// for anything else, including any message that does not decode.
pub fn parse_query(msg: &[u8]) -> Option<Query> {
    let m = Message::from_vec(msg).ok()?;
    let meta = &m.metadata;
    if meta.message_type != MessageType::Query || meta.op_code != OpCode::Query {
        return None;
    }
    let [q] = m.queries.as_slice() else {
        return None;
    };
    Some(Query {
        id: meta.id,
        name: name_of(&q.name)?,
        qtype: q.query_type.into(),
    })
}

/// What an answer teaches: QR=1, opcode QUERY, exactly one question of
/// class IN with a hostname (see [`name_of`]), the TC bit clear (a
/// truncated answer is retried over TCP, and that one teaches); `None`
/// otherwise or when the bytes do not decode as a whole message (cut short,
/// malformed, a record's data longer or shorter than its length says).
/// Bytes after the last record the header announces are ignored, as stub
/// resolvers ignore them.
///
/// The addresses: starting at the question's name, follow CNAME records of
/// the answer section (class IN, owner compared case-insensitively) for at
/// most [`MAX_CHAIN`] hops; the chain stops at a name already on it (a
/// loop), at a name with two different CNAME targets, and at a target that
/// is not a hostname. Every A and AAAA record (class IN) of the answer
/// section whose owner is on the chain is learned, with the chain down to
/// its owner and the smallest TTL along it. Records of other owners, and
/// the authority and additional sections, are ignored. Nothing is learned
/// unless the response code is NOERROR (a stub resolver ignores the
/// records of an error answer).
pub fn parse_answer(msg: &[u8]) -> Option<Answer> {
    let m = Message::from_vec(msg).ok()?;
    let meta = &m.metadata;
    if meta.message_type != MessageType::Response
        || meta.op_code != OpCode::Query
        || meta.truncation
    {
        return None;
    }
    let [q] = m.queries.as_slice() else {
        return None;
    };
    if q.query_class != DNSClass::IN {
        return None;
    }
    let qname = name_of(&q.name)?;
    let rcode = u16::from(meta.response_code);
    let addresses = if meta.response_code == ResponseCode::NoError {
        learn(&qname, &m.answers)
    } else {
        Vec::new()
    };
    Some(Answer {
        id: meta.id,
        name: qname,
        qtype: q.query_type.into(),
        rcode,
        addresses,
    })
}

/// The chain from `qname` (each name with the smallest TTL down to it),
/// then the addresses of its names.
fn learn(qname: &str, answers: &[Record]) -> Vec<Learned> {
    // Owners as our names once; records we cannot name are skipped.
    let named: Vec<(String, &Record)> = answers
        .iter()
        .filter(|r| r.dns_class == DNSClass::IN)
        .filter_map(|r| Some((name_of(&r.name)?, r)))
        .collect();
    // (name, smallest TTL of the CNAMEs that led here).
    let mut chain: Vec<(String, u32)> = vec![(qname.to_string(), u32::MAX)];
    while chain.len() <= MAX_CHAIN {
        let (current, ttl) = chain.last().expect("never empty").clone();
        let mut targets = named.iter().filter_map(|(owner, r)| match &r.data {
            RData::CNAME(c) if *owner == current => Some((name_of(&c.0), ttl_of(r))),
            _ => None,
        });
        let Some((first, first_ttl)) = targets.next() else {
            break;
        };
        // One target per alias; the TTL of a repeated record is its smallest.
        let mut hop_ttl = first_ttl;
        let mut ambiguous = false;
        for (other, other_ttl) in targets {
            ambiguous |= other != first;
            hop_ttl = hop_ttl.min(other_ttl);
        }
        let Some(target) = first else {
            break;
        };
        if ambiguous || chain.iter().any(|(n, _)| *n == target) {
            break;
        }
        chain.push((target, ttl.min(hop_ttl)));
    }
    let mut out = Vec::new();
    for (owner, r) in &named {
        let addr = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if let Some(i) = chain.iter().position(|(n, _)| n == owner) {
            out.push(Learned {
                addr,
                ttl: chain[i].1.min(ttl_of(r)),
                chain: chain[..=i].iter().map(|(n, _)| n.clone()).collect(),
            });
        }
    }
    out
}

/// A record's TTL as a resolver reads it: the top bit set means 0.
fn ttl_of(r: &Record) -> u32 {
    if r.ttl > i32::MAX as u32 {
        0
    } else {
        r.ttl
    }
}

/// A name as policy rules spell it: lowercase ASCII labels joined with
/// `.`, no trailing dot. `None` unless every label is a non-empty run of
/// letters, digits, `-` and `_` (so a label holding a `.`, a space or a
/// zero byte can never read as some other, allowed name).
pub fn name_of(name: &Name) -> Option<String> {
    let mut out = String::new();
    for label in name.iter() {
        if label.is_empty()
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
    }
    Some(out)
}

/// The biggest buffer a [`TcpFramer`] ever holds. It holds at most one
/// partial message (2 + 65 535 bytes), so this is a bound kept by
/// construction and checked, not a limit a stream can reach.
pub const MAX_TCP_BUFFER: usize = 128 * 1024;

/// DNS over TCP (RFC 1035 §4.2.2, RFC 7766): each message is preceded by
/// its length, two bytes big-endian. Give it the bytes of one direction of
/// one connection in order; it hands back whole messages.
#[derive(Debug, Default)]
pub struct TcpFramer {
    /// The partial message: its length prefix, then what came of it.
    buf: Vec<u8>,
}

impl TcpFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next bytes of the stream; returns the messages they
    /// complete (without their prefixes), in order. A zero length frames
    /// no message and is skipped.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let want = if self.buf.len() < 2 {
                2 - self.buf.len()
            } else {
                2 + usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]])) - self.buf.len()
            };
            let take = want.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < 2 {
                continue;
            }
            let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
            if self.buf.len() == 2 + len {
                if len > 0 {
                    out.push(self.buf[2..].to_vec());
                }
                self.buf.clear();
            }
            if self.buf.len() > MAX_TCP_BUFFER {
                // Unreachable by construction; drop the state rather than grow.
                self.reset();
            }
        }
        out
    }

    /// Bytes of a message not yet complete (prefix included).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forgets the partial message: for a gap in the stream, after which
    /// the framing cannot be trusted.
    pub fn reset(&mut self) {
        self.buf = Vec::new();
    }
}

#[cfg(test)]
mod tests;
