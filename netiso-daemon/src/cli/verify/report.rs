//! The verify report for people: the matrix, sources down and
//! destinations across, and the details of what did not match.
use super::{Class, Outcome, Probe, ProbeProto, Report};

fn paint(text: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// The matrix (sources down, destinations across) and the details.
pub fn render(r: &Report, verbose: bool, color: bool) -> String {
    let mut classes: Vec<&Class> = r
        .probes
        .iter()
        .flat_map(|p| [&p.from_class, &p.to_class])
        .chain(r.skipped.iter().flat_map(|s| [&s.from_class, &s.to_class]))
        .collect();
    classes.sort();
    classes.dedup();
    let width = classes.iter().map(|c| c.0.len()).max().unwrap_or(4).max(13);
    let mut out = format!("Policy: {}\n\n", r.policy.display());
    out.push_str(&format!("{:>width$}", "from \\ to"));
    for c in &classes {
        out.push_str(&format!("  {:<width$}", c.0));
    }
    out.push('\n');
    for src in &classes {
        out.push_str(&format!("{:>width$}", src.0));
        for dst in &classes {
            let cell: Vec<&Probe> = r
                .probes
                .iter()
                .filter(|p| &p.from_class == *src && &p.to_class == *dst)
                .collect();
            let text = if cell.is_empty() {
                ("-".to_string(), "2")
            } else {
                let bad = cell
                    .iter()
                    .filter(|p| p.outcome == Outcome::Mismatch)
                    .count();
                let unk = cell
                    .iter()
                    .filter(|p| p.outcome == Outcome::Inconclusive)
                    .count();
                if bad > 0 {
                    (format!("MISMATCH {bad}/{}", cell.len()), "1;31")
                } else if unk > 0 {
                    (
                        format!("ok {}/{} ?{unk}", cell.len() - unk, cell.len()),
                        "33",
                    )
                } else {
                    (format!("ok {}/{}", cell.len(), cell.len()), "32")
                }
            };
            let padded = format!("{:<width$}", text.0);
            out.push_str(&format!("  {}", paint(&padded, text.1, color)));
        }
        out.push('\n');
    }
    let shown: Vec<&Probe> = r
        .probes
        .iter()
        .filter(|p| verbose || p.outcome != Outcome::Ok)
        .collect();
    if !shown.is_empty() {
        out.push('\n');
    }
    for p in shown {
        let what = if p.proto == ProbeProto::Icmp {
            "icmp echo".to_string()
        } else {
            format!("{}/{} ({})", p.port, p.proto.as_str(), p.port_source)
        };
        let tag = match p.outcome {
            Outcome::Ok => paint("ok          ", "32", color),
            Outcome::Mismatch => paint("MISMATCH    ", "1;31", color),
            Outcome::Inconclusive => paint("inconclusive", "33", color),
        };
        out.push_str(&format!(
            "{tag}  {} -> {} {what}: policy says {} ({}); observed {}\n",
            p.from.name,
            p.to.name,
            p.expected,
            if p.expected_rule == 0 {
                "group defaults".to_string()
            } else {
                format!("rule #{}", p.expected_rule)
            },
            p.observed.describe()
        ));
    }
    if !r.skipped.is_empty() {
        out.push_str("\nNot probed:\n");
        for s in &r.skipped {
            out.push_str(&format!(
                "  {} -> {}: {}\n",
                s.from_class.0, s.to_class.0, s.reason
            ));
        }
    }
    out.push_str(&format!(
        "\n{} probes: {} ok, {} mismatches, {} inconclusive\n",
        r.probes.len(),
        r.ok,
        r.mismatches,
        r.inconclusive
    ));
    out
}
