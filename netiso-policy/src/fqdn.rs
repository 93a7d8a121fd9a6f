//! Peers written by name (`{ fqdn = "api.stripe.com" }`, `{ fqdn =
//! "*.s3.amazonaws.com" }`): the patterns, their checks and how a name
//! matches. The addresses behind a name are learned at run time from the
//! DNS answers a container receives; this module only knows names. Uses
//! nothing.

/// Longest name DNS allows (RFC 1035, without the trailing dot).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// A rule's peer by name: one or more patterns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FqdnPeer {
    /// Normalized patterns (lowercase, no trailing dot), sorted, distinct.
    pub patterns: Vec<String>,
    /// How rules, stats and `explain` name it: `fqdn:api.stripe.com`,
    /// `fqdn:a.example,*.b.example`.
    pub name: String,
}

impl FqdnPeer {
    pub fn new(mut patterns: Vec<String>) -> Self {
        patterns.sort();
        patterns.dedup();
        let name = format!("fqdn:{}", patterns.join(","));
        Self { patterns, name }
    }

    /// Whether a name a container resolved is one of this peer's.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| pattern_matches(p, name))
    }
}

/// `pattern` is an exact name, or `*.` and a suffix: any name with one or
/// more labels before the suffix (`*.example.com` matches `a.example.com`
/// and `a.b.example.com`, not `example.com`). Case-insensitive; a
/// trailing dot on `name` is ignored.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => name.eq_ignore_ascii_case(pattern),
    }
}

/// Why a pattern is not one: (message, help).
pub type PatternError = (String, String);

/// Checks and normalizes a pattern: lowercase, no trailing dot; labels of
/// letters, digits, `-` and `_`, 1–63 long; at most 253 in all; `*` only
/// as the whole first label, followed by at least two labels (`*.com`
/// would be every name under a top-level domain).
pub fn check_pattern(raw: &str) -> Result<String, PatternError> {
    let p = raw.trim().to_ascii_lowercase();
    let p = p.strip_suffix('.').unwrap_or(&p).to_string();
    let help_exact = "write a name like \"api.example.com\" or a wildcard like \"*.example.com\"";
    if p.is_empty() {
        return Err(("an empty name".into(), help_exact.into()));
    }
    if p.len() > MAX_NAME {
        return Err((
            format!(
                "the name is {} characters long; DNS allows {MAX_NAME}",
                p.len()
            ),
            help_exact.into(),
        ));
    }
    let (wild, rest) = match p.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, p.as_str()),
    };
    let labels: Vec<&str> = rest.split('.').collect();
    for l in &labels {
        if l.contains('*') {
            return Err((
                format!("\"{raw}\": `*` may only stand as the whole first label"),
                "write \"*.example.com\" to match every name under example.com".into(),
            ));
        }
        if l.is_empty() || l.len() > MAX_LABEL {
            return Err((
                format!("\"{raw}\" has an empty or over-long label"),
                help_exact.into(),
            ));
        }
        if !l
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((
                format!("\"{raw}\" has a character DNS names do not use"),
                "labels are letters, digits, `-` and `_` (IDNs: write the xn-- form)".into(),
            ));
        }
    }
    if wild && labels.len() < 2 {
        return Err((
            format!("\"{raw}\" matches every name under a top-level domain"),
            "name at least two labels after `*.`, like \"*.example.com\"".into(),
        ));
    }
    if !wild && labels.len() < 2 && p != "localhost" {
        return Err((
            format!("\"{raw}\" is not a fully qualified name"),
            "write the whole name, like \"api.example.com\" (search domains are not applied)"
                .into(),
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_names_and_subdomains() {
        assert!(pattern_matches("api.stripe.com", "API.Stripe.com."));
        assert!(!pattern_matches("api.stripe.com", "xapi.stripe.com"));
        assert!(pattern_matches("*.s3.amazonaws.com", "b.s3.amazonaws.com"));
        assert!(pattern_matches(
            "*.s3.amazonaws.com",
            "a.b.s3.amazonaws.com"
        ));
        assert!(!pattern_matches("*.s3.amazonaws.com", "s3.amazonaws.com"));
        assert!(!pattern_matches(
            "*.s3.amazonaws.com",
            "evils3.amazonaws.com"
        ));
        assert!(!pattern_matches("*.s3.amazonaws.com", ".s3.amazonaws.com"));
        let peer = FqdnPeer::new(vec![
            "b.example".into(),
            "a.example".into(),
            "a.example".into(),
        ]);
        assert_eq!(peer.name, "fqdn:a.example,b.example");
        assert!(peer.matches("b.example"));
    }

    #[test]
    fn patterns_are_checked_and_normalized() {
        assert_eq!(check_pattern("API.Stripe.com.").unwrap(), "api.stripe.com");
        assert_eq!(
            check_pattern("*.S3.amazonaws.com").unwrap(),
            "*.s3.amazonaws.com"
        );
        for bad in [
            "",
            "*",
            "*.com",
            "a*.example.com",
            "api.*.com",
            "a..b",
            "exa mple.com",
            "stripe",
            "-",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
        assert!(check_pattern(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(check_pattern(&"a.".repeat(130)).is_err());
    }
}
