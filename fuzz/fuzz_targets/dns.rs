//! DNS messages as the daemon reads them for egress by name
//! (`netiso_daemon::host::dns`): queries containers send and answers
//! resolvers send back, over UDP or TCP.
//!
//! Both come from parties netiso does not trust (a hostile container, a
//! resolver it chose): reading must never panic, and an answer may only
//! teach addresses on the CNAME chain from its own question: every learned
//! chain starts at the question's name, holds no name twice, is at most
//! `MAX_CHAIN` hops, and nothing is learned from an error answer. TCP
//! framing gives the same messages wherever the stream is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netiso_daemon::host::dns::{parse_answer, parse_query, TcpFramer, MAX_CHAIN, MAX_TCP_BUFFER};

fuzz_target!(|data: &[u8]| {
    if let Some(q) = parse_query(data) {
        assert!(!q.name.ends_with('.'), "{q:?}");
        assert_eq!(q.name, q.name.to_ascii_lowercase(), "{q:?}");
    }
    if let Some(a) = parse_answer(data) {
        assert!(a.rcode == 0 || a.addresses.is_empty(), "{a:?}");
        for l in &a.addresses {
            assert_eq!(l.chain.first(), Some(&a.name), "{a:?}");
            assert!(l.chain.len() <= MAX_CHAIN + 1, "{a:?}");
            assert!(l.ttl <= i32::MAX as u32, "{a:?}");
            for (i, n) in l.chain.iter().enumerate() {
                assert!(!l.chain[..i].contains(n), "a name twice: {a:?}");
            }
        }
    }
    // The same bytes as a TCP stream, whole and split in three.
    let mut whole = TcpFramer::new();
    let want = whole.push(data);
    let (i, j) = match data {
        [a, b, ..] => {
            let i = usize::from(*a) % (data.len() + 1);
            (i, i + usize::from(*b) % (data.len() - i + 1))
        }
        _ => (0, 0),
    };
    let mut split = TcpFramer::new();
    let mut got = split.push(&data[..i]);
    got.extend(split.push(&data[i..j]));
    got.extend(split.push(&data[j..]));
    assert_eq!(got, want);
    assert_eq!(split.pending(), whole.pending());
    assert!(split.pending() <= MAX_TCP_BUFFER);
    for msg in &want {
        let _ = parse_answer(msg);
        let _ = parse_query(msg);
    }
});
