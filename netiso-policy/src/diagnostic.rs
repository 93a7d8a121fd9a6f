//! Diagnostics: what went wrong (or looks wrong), where, and how to fix it,
//! rendered the way rustc does so that operators recognise the layout.
use std::fmt;
use std::ops::Range;

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// What kind of problem a diagnostic reports. The slug appears in the
/// rendered text (`error[bad-port]`) so that people can search for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    UnknownKey,
    MissingKey,
    /// A value of the wrong type, or a string that is not one of the accepted words.
    BadValue,
    UnknownGroup,
    EmptySelector,
    BadPort,
    PortRange,
    ReservedName,
    DuplicateGroup,
    /// The same setting given in two files.
    DuplicateSetting,
    /// An address block that does not parse, or an exception outside its block.
    BadCidr,
    /// A `fail_closed` group without a `network` criterion.
    FailClosedNetwork,
    /// A peer by name that is not a valid name or pattern, or used where
    /// names cannot be (a source, a deny rule).
    BadFqdn,
    /// The compiled policy does not fit in the kernel maps.
    TooLarge,
    /// Warning: a rule that can never decide a packet.
    ShadowedRule,
    /// Warning: a group that changes nothing.
    UnusedGroup,
    /// Warning: a group or rule that can never match anything.
    NeverMatches,
    /// Warning: port entries that add nothing.
    RedundantPort,
    /// Warning: a selector other nodes of a Swarm can only infer (the
    /// stack of a task on another node, from its service's name).
    InferredRemotely,
    /// Warning: in a policy for a Swarm, a group named by a rule that
    /// selects by what other nodes cannot see (labels, image).
    LocalOnlySelector,
}

impl Kind {
    pub const fn slug(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::Syntax => "syntax",
            Self::UnknownKey => "unknown-key",
            Self::MissingKey => "missing-key",
            Self::BadValue => "bad-value",
            Self::UnknownGroup => "unknown-group",
            Self::EmptySelector => "empty-selector",
            Self::BadPort => "bad-port",
            Self::PortRange => "port-range",
            Self::ReservedName => "reserved-name",
            Self::DuplicateGroup => "duplicate-group",
            Self::DuplicateSetting => "duplicate-setting",
            Self::BadCidr => "bad-cidr",
            Self::FailClosedNetwork => "fail-closed-network",
            Self::BadFqdn => "bad-fqdn",
            Self::TooLarge => "too-large",
            Self::ShadowedRule => "shadowed-rule",
            Self::UnusedGroup => "unused-group",
            Self::NeverMatches => "never-matches",
            Self::RedundantPort => "redundant-port",
            Self::InferredRemotely => "inferred-remotely",
            Self::LocalOnlySelector => "local-only-selector",
        }
    }
}

/// A place in a policy file, with the text needed to show it, so that a
/// diagnostic can be rendered long after the source is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The whole line, without its line ending.
    pub line_text: String,
    /// Characters to underline, at least 1, never past the end of the line.
    pub width: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A secondary message, optionally pointing somewhere else (for example the
/// first definition of a duplicate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub message: String,
    pub location: Option<Location>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub kind: Kind,
    pub message: String,
    pub location: Option<Location>,
    /// Short text printed next to the caret.
    pub label: Option<String>,
    pub notes: Vec<Note>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            kind,
            message: message.into(),
            location: None,
            label: None,
            notes: Vec::new(),
            help: None,
        }
    }

    pub fn warning(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(kind, message)
        }
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn note(mut self, message: impl Into<String>, location: Option<Location>) -> Self {
        self.notes.push(Note {
            message: message.into(),
            location,
        });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One gutter width for the whole diagnostic keeps the bars aligned.
        let width = std::iter::once(&self.location)
            .chain(self.notes.iter().map(|n| &n.location))
            .flatten()
            .map(|l| l.line.to_string().len())
            .max()
            .unwrap_or(0);
        let pad = " ".repeat(width);
        writeln!(
            f,
            "{}[{}]: {}",
            self.severity.as_str(),
            self.kind.slug(),
            self.message
        )?;
        if let Some(loc) = &self.location {
            write_snippet(f, &pad, loc, '^', self.label.as_deref())?;
        }
        for note in &self.notes {
            match &note.location {
                Some(loc) => {
                    writeln!(f, "{pad} |")?;
                    writeln!(f, "note: {}", note.message)?;
                    write_snippet(f, &pad, loc, '-', None)?;
                }
                None => writeln!(f, "{pad} = note: {}", note.message)?,
            }
        }
        if let Some(help) = &self.help {
            if self.location.is_some() {
                writeln!(f, "{pad} |")?;
            }
            for (i, line) in help.lines().enumerate() {
                if i == 0 {
                    writeln!(f, "{pad} = help: {line}")?;
                } else {
                    writeln!(f, "{pad}         {line}")?;
                }
            }
        }
        Ok(())
    }
}

fn write_snippet(
    f: &mut fmt::Formatter<'_>,
    pad: &str,
    loc: &Location,
    mark: char,
    label: Option<&str>,
) -> fmt::Result {
    writeln!(f, "{pad}--> {loc}")?;
    writeln!(f, "{pad} |")?;
    writeln!(f, "{:>w$} | {}", loc.line, loc.line_text, w = pad.len())?;
    // Copy tabs from the line so the caret lines up however tabs are shown.
    let indent: String = loc
        .line_text
        .chars()
        .take(loc.column.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let marks: String = std::iter::repeat_n(mark, loc.width.max(1)).collect();
    match label {
        Some(label) => writeln!(f, "{pad} | {indent}{marks} {label}"),
        None => writeln!(f, "{pad} | {indent}{marks}"),
    }
}

/// Renders several diagnostics as one report, errors counted at the end.
pub fn render(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    match errors {
        0 => {}
        1 => out.push_str("error: the policy was rejected because of the error above\n"),
        n => out.push_str(&format!(
            "error: the policy was rejected because of the {n} errors above\n"
        )),
    }
    out
}

/// Every error found in the policy (not just the first).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", render(.diagnostics).trim_end())]
pub struct PolicyError {
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicyError {
    pub fn new(diagnostics: Vec<Diagnostic>) -> Self {
        Self { diagnostics }
    }
}

impl From<Diagnostic> for PolicyError {
    fn from(d: Diagnostic) -> Self {
        Self::new(vec![d])
    }
}

/// A policy file's text, for turning byte spans into [`Location`]s.
#[derive(Clone, Debug)]
pub(crate) struct SourceFile {
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            name: name.into(),
            text,
            line_starts,
        }
    }

    pub fn location(&self, span: Range<usize>) -> Location {
        let start = floor_boundary(&self.text, span.start);
        let end = floor_boundary(&self.text, span.end.max(start));
        let line_idx = self.line_starts.partition_point(|&s| s <= start) - 1;
        let line_start = self.line_starts[line_idx];
        let line_end = self.text[line_start..]
            .find('\n')
            .map_or(self.text.len(), |i| line_start + i);
        let line_text = self.text[line_start..line_end].trim_end_matches('\r');
        let column = self.text[line_start..start].chars().count() + 1;
        let width = self.text[start..end.min(line_end).max(start)]
            .chars()
            .count()
            .max(1);
        Location {
            file: self.name.clone(),
            line: line_idx + 1,
            column,
            line_text: line_text.to_string(),
            width,
        }
    }
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Edit distance in characters, counting a swap of two neighbours as one
/// edit (optimal string alignment): "dney" is one typo away from "deny".
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j - 1] + cost)
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely typo
/// (the same threshold rustc uses: a third of the length).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = word.chars().count().max(3) / 3;
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| {
            let d = if c.eq_ignore_ascii_case(word) {
                0
            } else {
                edit_distance(word, c)
            };
            (d, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_characters() {
        let src = SourceFile::new("f.toml", "a = 1\r\nnamé = \"x\"\n");
        let loc = src.location(15..18);
        assert_eq!((loc.line, loc.column, loc.width), (2, 8, 3));
        assert_eq!(loc.line_text, "namé = \"x\"");
        // A span at the very end (e.g. "unexpected end of file") still renders.
        let end = src.location(src.text.len()..src.text.len());
        assert_eq!((end.line, end.column, end.width), (3, 1, 1));
    }

    #[test]
    fn rendering_looks_like_rustc() {
        let src = SourceFile::new("p.toml", "[[rules]]\nto = \"databse\"\n");
        let d = Diagnostic::error(Kind::UnknownGroup, "unknown group \"databse\"")
            .at(src.location(15..24))
            .label("no such group")
            .help("did you mean \"database\"?");
        assert_eq!(
            d.to_string(),
            "error[unknown-group]: unknown group \"databse\"\n\
             \x20--> p.toml:2:6\n\
             \x20 |\n\
             2 | to = \"databse\"\n\
             \x20 |      ^^^^^^^^^ no such group\n\
             \x20 |\n\
             \x20 = help: did you mean \"database\"?\n"
        );
    }

    #[test]
    fn suggestions_use_edit_distance() {
        assert_eq!(edit_distance("databse", "database"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("dney", "deny"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let groups = ["web", "database", "cache"];
        assert_eq!(did_you_mean("databse", groups), Some("database"));
        assert_eq!(did_you_mean("Web", groups), Some("web"));
        assert_eq!(did_you_mean("zzz", groups), None);
    }
}
