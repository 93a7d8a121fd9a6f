//! `host::dns` against messages built with hickory-proto and by hand:
//! chains, TTLs, owners a resolver must not teach, loops, error answers,
//! cut and random bytes (never a panic), and TCP framing at every split.
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType, OpCode, Query as Q, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use proptest::prelude::*;

use super::*;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

fn aaaa(owner: &str, ttl: u32, ip: Ipv6Addr) -> Record {
    Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip)))
}

fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

fn response(qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
    let mut m = Message::response(0x1234, OpCode::Query);
    m.add_query(Q::query(name(qname), qtype));
    m.add_answers(answers);
    m
}

fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap()
}

fn answer(qname: &str, qtype: RecordType, answers: Vec<Record>) -> Answer {
    parse_answer(&bytes(&response(qname, qtype, answers))).expect("an answer")
}

fn chain(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn learned(addr: impl Into<IpAddr>, ttl: u32, names: &[&str]) -> Learned {
    Learned {
        addr: addr.into(),
        ttl,
        chain: chain(names),
    }
}

#[test]
fn a_query_names_its_question_in_lowercase_without_the_dot() {
    let mut m = Message::query();
    m.metadata.id = 77;
    m.add_query(Q::query(name("Api.Stripe.COM."), RecordType::AAAA));
    assert_eq!(
        parse_query(&bytes(&m)),
        Some(Query {
            id: 77,
            name: "api.stripe.com".into(),
            qtype: 28
        })
    );
    // Not fully qualified on the wire is the same (the wire has no dot).
    let mut m = Message::query();
    m.add_query(Q::query(name("example.org"), RecordType::A));
    assert_eq!(parse_query(&bytes(&m)).unwrap().name, "example.org");
}

#[test]
fn only_plain_queries_with_one_question_are_queries() {
    let one = |m: &mut Message| {
        m.add_query(Q::query(name("a.example."), RecordType::A));
    };
    let mut response = Message::response(1, OpCode::Query);
    one(&mut response);
    assert_eq!(parse_query(&bytes(&response)), None);
    let mut notify = Message::new(1, MessageType::Query, OpCode::Notify);
    one(&mut notify);
    assert_eq!(parse_query(&bytes(&notify)), None);
    let none = Message::new(1, MessageType::Query, OpCode::Query);
    assert_eq!(parse_query(&bytes(&none)), None);
    let mut two = Message::new(1, MessageType::Query, OpCode::Query);
    one(&mut two);
    two.add_query(Q::query(name("b.example."), RecordType::A));
    assert_eq!(parse_query(&bytes(&two)), None);
    // And a query is no answer.
    let mut q = Message::new(1, MessageType::Query, OpCode::Query);
    one(&mut q);
    assert!(parse_query(&bytes(&q)).is_some());
    assert_eq!(parse_answer(&bytes(&q)), None);
}

#[test]
fn a_and_aaaa_of_the_question_are_learned() {
    let got = answer(
        "api.example.com.",
        RecordType::A,
        vec![
            a("api.example.com.", 300, [198, 18, 0, 1]),
            a("api.example.com.", 200, [198, 18, 0, 2]),
        ],
    );
    assert_eq!((got.id, got.qtype, got.rcode), (0x1234, 1, 0));
    assert_eq!(got.name, "api.example.com");
    assert_eq!(
        got.addresses,
        [
            learned(Ipv4Addr::new(198, 18, 0, 1), 300, &["api.example.com"]),
            learned(Ipv4Addr::new(198, 18, 0, 2), 200, &["api.example.com"]),
        ]
    );
    let v6: Ipv6Addr = "2001:db8::53".parse().unwrap();
    let got = answer(
        "api.example.com.",
        RecordType::AAAA,
        vec![aaaa("api.example.com.", 60, v6)],
    );
    assert_eq!(got.qtype, 28);
    assert_eq!(got.addresses, [learned(v6, 60, &["api.example.com"])]);
}

#[test]
fn a_cname_chain_is_followed_with_the_smallest_ttl() {
    let got = answer(
        "www.example.com.",
        RecordType::A,
        vec![
            cname("www.example.com.", 300, "edge.cdn.example."),
            cname("edge.cdn.example.", 60, "pop7.cdn.example."),
            cname("pop7.cdn.example.", 900, "host.cdn.example."),
            a("host.cdn.example.", 3600, [198, 18, 1, 1]),
            // An address at a middle hop: its own chain, its own minimum.
            a("edge.cdn.example.", 30, [198, 18, 1, 2]),
        ],
    );
    assert_eq!(
        got.addresses,
        [
            learned(
                Ipv4Addr::new(198, 18, 1, 1),
                60,
                &[
                    "www.example.com",
                    "edge.cdn.example",
                    "pop7.cdn.example",
                    "host.cdn.example"
                ]
            ),
            learned(
                Ipv4Addr::new(198, 18, 1, 2),
                30,
                &["www.example.com", "edge.cdn.example"]
            ),
        ]
    );
    // The order of the records does not matter.
    let got = answer(
        "www.example.com.",
        RecordType::A,
        vec![
            a("host.cdn.example.", 3600, [198, 18, 1, 1]),
            cname("edge.cdn.example.", 60, "host.cdn.example."),
            cname("www.example.com.", 10, "edge.cdn.example."),
        ],
    );
    assert_eq!(
        got.addresses,
        [learned(
            Ipv4Addr::new(198, 18, 1, 1),
            10,
            &["www.example.com", "edge.cdn.example", "host.cdn.example"]
        )]
    );
}

#[test]
fn records_of_other_owners_teach_nothing() {
    let mut m = response(
        "api.example.com.",
        RecordType::A,
        vec![
            a("api.example.com.", 300, [198, 18, 0, 1]),
            // Not asked about, not on the chain.
            a("bank.example.", 300, [198, 18, 9, 9]),
            cname("bank.example.", 300, "api.example.com."),
            cname("other.example.", 300, "evil.example."),
            a("evil.example.", 300, [198, 18, 9, 10]),
        ],
    );
    // The question's own name in the other sections: not an answer.
    m.add_authority(a("api.example.com.", 300, [198, 18, 9, 11]));
    m.add_additional(a("api.example.com.", 300, [198, 18, 9, 12]));
    m.add_additional(a("bank.example.", 300, [198, 18, 9, 13]));
    let got = parse_answer(&bytes(&m)).unwrap();
    assert_eq!(
        got.addresses,
        [learned(
            Ipv4Addr::new(198, 18, 0, 1),
            300,
            &["api.example.com"]
        )]
    );
    // A CNAME in the additional section does not extend the chain.
    let mut m = response(
        "api.example.com.",
        RecordType::A,
        vec![a("evil.example.", 300, [198, 18, 9, 9])],
    );
    m.add_additional(cname("api.example.com.", 300, "evil.example."));
    assert_eq!(parse_answer(&bytes(&m)).unwrap().addresses, []);
}

#[test]
fn records_of_another_class_teach_nothing() {
    let mut chaos = a("api.example.com.", 300, [198, 18, 9, 9]);
    chaos.dns_class = DNSClass::CH;
    let mut chaos_alias = cname("api.example.com.", 300, "evil.example.");
    chaos_alias.dns_class = DNSClass::CH;
    let got = answer(
        "api.example.com.",
        RecordType::A,
        vec![
            chaos,
            chaos_alias,
            a("evil.example.", 300, [198, 18, 9, 10]),
        ],
    );
    assert_eq!(got.addresses, []);
}

#[test]
fn names_compare_without_case() {
    let got = answer(
        "API.Example.com.",
        RecordType::A,
        vec![
            cname("api.EXAMPLE.com.", 100, "Edge.CDN.example."),
            a("EDGE.cdn.EXAMPLE.", 200, [198, 18, 2, 1]),
        ],
    );
    assert_eq!(got.name, "api.example.com");
    assert_eq!(
        got.addresses,
        [learned(
            Ipv4Addr::new(198, 18, 2, 1),
            100,
            &["api.example.com", "edge.cdn.example"]
        )]
    );
}

#[test]
fn a_cname_loop_stops_and_keeps_what_is_on_the_chain() {
    let got = answer(
        "a.example.",
        RecordType::A,
        vec![
            cname("a.example.", 50, "b.example."),
            cname("b.example.", 40, "a.example."),
            a("a.example.", 300, [198, 18, 3, 1]),
            a("b.example.", 300, [198, 18, 3, 2]),
        ],
    );
    assert_eq!(
        got.addresses,
        [
            learned(Ipv4Addr::new(198, 18, 3, 1), 300, &["a.example"]),
            learned(
                Ipv4Addr::new(198, 18, 3, 2),
                50,
                &["a.example", "b.example"]
            ),
        ]
    );
    // A name aliasing itself.
    let got = answer(
        "a.example.",
        RecordType::A,
        vec![
            cname("a.example.", 50, "a.example."),
            a("a.example.", 300, [198, 18, 3, 1]),
        ],
    );
    assert_eq!(
        got.addresses,
        [learned(Ipv4Addr::new(198, 18, 3, 1), 300, &["a.example"])]
    );
}

#[test]
fn the_chain_is_at_most_eight_hops() {
    let hop = |i: usize| format!("h{i}.example.");
    let mut records: Vec<Record> = (0..12).map(|i| cname(&hop(i), 100, &hop(i + 1))).collect();
    for i in 0..=12 {
        records.push(a(&hop(i), 100, [198, 18, 4, i as u8]));
    }
    let got = answer(&hop(0), RecordType::A, records);
    let reached: Vec<_> = got.addresses.iter().map(|l| l.chain.len()).collect();
    assert_eq!(reached, (1..=MAX_CHAIN + 1).collect::<Vec<_>>());
    assert_eq!(
        got.addresses.last().unwrap().chain.last().unwrap(),
        "h8.example"
    );
}

#[test]
fn an_alias_with_two_targets_ends_the_chain() {
    let got = answer(
        "a.example.",
        RecordType::A,
        vec![
            cname("a.example.", 50, "b.example."),
            cname("a.example.", 50, "c.example."),
            a("b.example.", 300, [198, 18, 5, 1]),
            a("c.example.", 300, [198, 18, 5, 2]),
        ],
    );
    assert_eq!(got.addresses, []);
    // The same alias twice is one alias (the smaller TTL).
    let got = answer(
        "a.example.",
        RecordType::A,
        vec![
            cname("a.example.", 50, "b.example."),
            cname("A.example.", 20, "B.example."),
            a("b.example.", 300, [198, 18, 5, 1]),
        ],
    );
    assert_eq!(
        got.addresses,
        [learned(
            Ipv4Addr::new(198, 18, 5, 1),
            20,
            &["a.example", "b.example"]
        )]
    );
}

#[test]
fn a_ttl_with_the_top_bit_is_zero() {
    let got = answer(
        "a.example.",
        RecordType::A,
        vec![a("a.example.", 0x8000_0001, [198, 18, 6, 1])],
    );
    assert_eq!(got.addresses[0].ttl, 0);
}

#[test]
fn an_error_answer_teaches_nothing() {
    let mut m = response(
        "gone.example.",
        RecordType::A,
        vec![
            cname("gone.example.", 60, "x.example."),
            a("gone.example.", 300, [198, 18, 7, 1]),
        ],
    );
    m.metadata.response_code = ResponseCode::NXDomain;
    let got = parse_answer(&bytes(&m)).unwrap();
    assert_eq!((got.rcode, got.name.as_str()), (3, "gone.example"));
    assert_eq!(got.addresses, []);
    m.metadata.response_code = ResponseCode::ServFail;
    assert_eq!(parse_answer(&bytes(&m)).unwrap().rcode, 2);
    // NOERROR without data: an answer, nothing learned.
    assert_eq!(
        answer("empty.example.", RecordType::AAAA, vec![]).addresses,
        []
    );
}

#[test]
fn a_truncated_answer_teaches_nothing() {
    let mut m = response(
        "a.example.",
        RecordType::A,
        vec![a("a.example.", 300, [198, 18, 8, 1])],
    );
    m.metadata.truncation = true;
    assert_eq!(parse_answer(&bytes(&m)), None);
}

#[test]
fn every_cut_of_a_message_is_refused() {
    let mut m = response(
        "www.example.com.",
        RecordType::A,
        vec![
            cname("www.example.com.", 300, "edge.cdn.example."),
            a("edge.cdn.example.", 300, [198, 18, 1, 1]),
        ],
    );
    m.add_additional(a("ns.example.", 300, [198, 18, 1, 2]));
    let full = bytes(&m);
    assert!(parse_answer(&full).is_some());
    for len in 0..full.len() {
        assert_eq!(parse_answer(&full[..len]), None, "cut at {len}");
        assert_eq!(parse_query(&full[..len]), None, "cut at {len}");
    }
    let mut q = Message::query();
    q.add_query(Q::query(name("www.example.com."), RecordType::A));
    let full = bytes(&q);
    for len in 0..full.len() {
        assert_eq!(parse_query(&full[..len]), None, "cut at {len}");
    }
}

/// A header (id 1, the given flags, one question, `an` answers) and the
/// raw question name, type A, class IN.
fn raw(flags: u16, an: u16, qname: &[u8]) -> Vec<u8> {
    let mut m = vec![0, 1];
    m.extend(flags.to_be_bytes());
    m.extend([0, 1]);
    m.extend(an.to_be_bytes());
    m.extend([0, 0, 0, 0]);
    m.extend(qname);
    m.extend([0, 1, 0, 1]);
    m
}

#[test]
fn a_label_that_is_not_a_hostname_is_refused() {
    // One label "api.stripe" then "com": must not read as api.stripe.com.
    let dotted = b"\x0aapi.stripe\x03com\x00";
    assert_eq!(parse_query(&raw(0x0100, 0, dotted)), None);
    assert_eq!(parse_answer(&raw(0x8180, 0, dotted)), None);
    let nul = b"\x04ap\x00i\x03com\x00";
    assert_eq!(parse_query(&raw(0x0100, 0, nul)), None);
    // The same bytes with a plain label are fine.
    let plain = b"\x03api\x06stripe\x03com\x00";
    assert_eq!(
        parse_query(&raw(0x0100, 0, plain)).unwrap().name,
        "api.stripe.com"
    );
    // An alias to such a name ends the chain there.
    let mut m = response("a.example.", RecordType::A, vec![]);
    m.add_answer(Record::from_rdata(
        name("a.example."),
        60,
        RData::CNAME(CNAME(
            Name::from_labels([b"x y".as_slice(), b"example"]).unwrap(),
        )),
    ));
    let got = parse_answer(&bytes(&m)).unwrap();
    assert_eq!(got.addresses, []);
}

#[test]
fn a_compression_loop_is_refused() {
    // The question's name is a pointer to itself (offset 12).
    assert_eq!(parse_query(&raw(0x0100, 0, &[0xc0, 12])), None);
    // An answer whose owner points at itself.
    let mut m = raw(0x8180, 1, b"\x01a\x00");
    let owner_at = m.len() as u8;
    m.extend([0xc0, owner_at, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 1]);
    assert_eq!(parse_answer(&m), None);
    // The same answer with its owner pointing at the question: learned.
    let mut m = raw(0x8180, 1, b"\x01a\x00");
    m.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 1]);
    assert_eq!(
        parse_answer(&m).unwrap().addresses,
        [learned(Ipv4Addr::new(198, 18, 0, 1), 60, &["a"])]
    );
}

#[test]
fn random_bytes_never_panic() {
    // xorshift: thousands of inputs of every small length, deterministic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..20_000 {
        let len = i % 600;
        let msg: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = parse_query(&msg);
        let _ = parse_answer(&msg);
    }
}

proptest! {
    #[test]
    fn edited_answers_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut m = response(
            "www.example.com.",
            RecordType::A,
            vec![
                cname("www.example.com.", 300, "edge.cdn.example."),
                cname("edge.cdn.example.", 300, "www.example.com."),
                a("edge.cdn.example.", 300, [198, 18, 1, 1]),
                aaaa("www.example.com.", 300, Ipv6Addr::LOCALHOST),
            ],
        );
        m.add_additional(a("ns.example.", 300, [198, 18, 1, 2]));
        let mut msg = bytes(&m);
        for (at, b) in edits {
            let i = at.index(msg.len());
            msg[i] = b;
        }
        msg.truncate(cut.index(msg.len() + 1));
        msg.extend(extra);
        if let Some(got) = parse_answer(&msg) {
            for l in &got.addresses {
                prop_assert!(!l.chain.is_empty() && l.chain.len() <= MAX_CHAIN + 1);
                prop_assert_eq!(&l.chain[0], &got.name);
            }
        }
        let _ = parse_query(&msg);
    }
}

fn framed(msgs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend((m.len() as u16).to_be_bytes());
        out.extend(*m);
    }
    out
}

#[test]
fn tcp_framing_holds_at_every_split() {
    let big = vec![0xab; 300];
    let msgs: [&[u8]; 4] = [b"first", b"", &big, b"x"];
    let stream = framed(&msgs);
    let want: Vec<Vec<u8>> = [b"first".to_vec(), big.clone(), b"x".to_vec()].to_vec();
    for i in 0..=stream.len() {
        for j in i..=stream.len() {
            let mut f = TcpFramer::new();
            let mut got = f.push(&stream[..i]);
            got.extend(f.push(&stream[i..j]));
            got.extend(f.push(&stream[j..]));
            assert_eq!(got, want, "split at {i}, {j}");
            assert_eq!(f.pending(), 0);
        }
    }
    let mut f = TcpFramer::new();
    let got: Vec<Vec<u8>> = stream.iter().flat_map(|b| f.push(&[*b])).collect();
    assert_eq!(got, want);
}

#[test]
fn tcp_framing_is_bounded_and_resets() {
    let mut f = TcpFramer::new();
    // A message of the largest length, arriving in pieces.
    let biggest = vec![7u8; 65_535];
    let stream = framed(&[&biggest, b"after"]);
    let mut got = Vec::new();
    for piece in stream.chunks(4096) {
        got.extend(f.push(piece));
        assert!(f.pending() <= 2 + 65_535);
        assert!(f.pending() <= MAX_TCP_BUFFER);
    }
    assert_eq!(got, [biggest, b"after".to_vec()]);
    // Much more than the buffer bound in one push: fine, nothing held.
    let many: Vec<&[u8]> = vec![b"0123456789"; 20_000];
    assert_eq!(f.push(&framed(&many)).len(), 20_000);
    assert_eq!(f.pending(), 0);
    // A gap: reset forgets the partial message.
    assert_eq!(f.push(&[0, 9, 1, 2]), Vec::<Vec<u8>>::new());
    assert_eq!(f.pending(), 4);
    f.reset();
    assert_eq!(f.push(&framed(&[b"ok"])), [b"ok".to_vec()]);
}

#[test]
fn a_tcp_stream_of_answers_parses() {
    let m1 = bytes(&response(
        "a.example.",
        RecordType::A,
        vec![a("a.example.", 5, [198, 18, 0, 5])],
    ));
    let m2 = bytes(&response("b.example.", RecordType::AAAA, vec![]));
    let stream = framed(&[&m1, &m2]);
    let mut f = TcpFramer::new();
    let (head, tail) = stream.split_at(m1.len() + 3);
    let mut msgs = f.push(head);
    msgs.extend(f.push(tail));
    let names: Vec<_> = msgs.iter().map(|m| parse_answer(m).unwrap().name).collect();
    assert_eq!(names, ["a.example", "b.example"]);
}

#[test]
fn bytes_after_the_message_are_ignored_as_a_stub_resolver_does() {
    let mut msg = bytes(&response(
        "a.example.",
        RecordType::A,
        vec![a("a.example.", 5, [198, 18, 0, 4])],
    ));
    msg.extend([0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(parse_answer(&msg).unwrap().addresses.len(), 1);
    // Fewer answers announced than present: the rest is such bytes.
    msg[7] = 0;
    assert_eq!(parse_answer(&msg).unwrap().addresses, []);
    // More announced than present, or a record longer than it says: refused.
    msg[7] = 2;
    assert_eq!(parse_answer(&msg), None);
}
