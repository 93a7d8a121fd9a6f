//! Lines on the control socket: requests as the daemon parses them, and
//! responses and monitor lines as the client parses them.
//!
//! Only root (or the configured group) can connect, but the daemon must
//! still answer any line with a request or an error, never panic. A parsed
//! request written back must parse to the same request; a monitor filter
//! that validates must be usable on any row.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netiso_daemon::api::{self, RequestLine, Response, StreamLine, API_VERSION};
use netiso_daemon::observe::filter::Subject;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = api::parse_request(line.trim()) {
        let again = serde_json::to_string(&RequestLine {
            version: API_VERSION,
            request: req.clone(),
        })
        .unwrap();
        assert_eq!(api::parse_request(&again), Ok(req.clone()), "{again}");
        if let api::Request::MonitorSubscribe { filter } = req {
            if filter.validate().is_ok() {
                let subjects = [
                    Subject {
                        names: ["web-1", "db-1"],
                        ips: [Some("10.9.0.1".parse().unwrap()), None],
                        groups: ["web", "db,web"],
                        reason: "default-deny",
                    },
                    Subject {
                        names: [line, ""],
                        ips: [None, Some("fd00::1".parse().unwrap())],
                        groups: [line, "world"],
                        reason: line,
                    },
                ];
                for s in &subjects {
                    let _ = filter.matches(s);
                }
            }
        }
    }
    // What a client reads back.
    let _ = serde_json::from_str::<Response>(line);
    let _ = serde_json::from_str::<StreamLine>(line);
});
