//! The report: figures with their conditions, as markdown and JSON.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::conditions::Conditions;
use super::stats::Summary;
use super::Options;

/// A target from issue 7 and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// e.g. `<= 3.5x empty`.
    pub text: String,
    pub met: bool,
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// Stable machine name, e.g. `program.established.tcp4.r10000.e4000`.
    pub id: String,
    pub label: String,
    pub unit: String,
    /// Over repetitions (or samples, for latencies): median, min, max, count.
    pub value: Summary,
    /// The same against the baseline measured in the same run.
    pub ratio: Option<Summary>,
    /// What the ratio is relative to (e.g. `empty TC program`).
    pub ratio_to: Option<String>,
    /// Extra statistics (p99, ...).
    pub extra: BTreeMap<String, f64>,
    pub target: Option<Target>,
    pub conditions: BTreeMap<String, String>,
}

impl Figure {
    pub fn new(
        id: impl Into<String>,
        label: impl Into<String>,
        unit: &str,
        value: Summary,
    ) -> Self {
        Self {
            id: id.into(),
            label: label.into(),
            unit: unit.into(),
            value,
            ratio: None,
            ratio_to: None,
            extra: BTreeMap::new(),
            target: None,
            conditions: BTreeMap::new(),
        }
    }

    pub fn ratio(mut self, to: &str, r: Summary) -> Self {
        self.ratio = Some(r);
        self.ratio_to = Some(to.into());
        self
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Self {
        self.target = Some(Target {
            text: text.into(),
            met,
        });
        self
    }

    pub fn cond(mut self, k: &str, v: impl ToString) -> Self {
        self.conditions.insert(k.into(), v.to_string());
        self
    }

    pub fn extra(mut self, k: &str, v: f64) -> Self {
        self.extra.insert(k.into(), v);
        self
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Section {
    pub title: String,
    /// How it was measured (markdown).
    pub method: String,
    /// Conditions shared by every figure of the section.
    pub conditions: BTreeMap<String, String>,
    pub figures: Vec<Figure>,
    /// Extra markdown (matrices, notes) after the figure table.
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(title: &str, method: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            method: method.into(),
            conditions: BTreeMap::new(),
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn cond(&mut self, k: &str, v: impl ToString) {
        self.conditions.insert(k.into(), v.to_string());
    }

    pub fn figure(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub conditions: Conditions,
    pub smoke: bool,
    pub sections: Vec<Section>,
}

/// A number with 3 significant digits, thousands kept readable.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_summary(s: &Summary) -> String {
    format!(
        "{} ({} – {})",
        fmt_num(s.median),
        fmt_num(s.min),
        fmt_num(s.max)
    )
}

impl Report {
    pub fn new(opts: &Options, conditions: Conditions) -> Self {
        Self {
            conditions,
            smoke: opts.smoke,
            sections: Vec::new(),
        }
    }

    pub fn targets(&self) -> Vec<(&Figure, &Target)> {
        self.sections
            .iter()
            .flat_map(|s| s.figures.iter())
            .filter_map(|f| f.target.as_ref().map(|t| (f, t)))
            .collect()
    }

    pub fn markdown(&self) -> String {
        let c = &self.conditions;
        let mut md = String::new();
        let _ = writeln!(md, "# netiso benchmark report — {}\n", c.started);
        if self.smoke {
            let _ = writeln!(
                md,
                "**Smoke run (tiny counts): these numbers only show that the harness works.**\n"
            );
        }
        let _ = writeln!(md, "| condition | value |\n|---|---|");
        let rows: Vec<(&str, String)> = vec![
            ("kernel", c.kernel.clone()),
            ("CPU", format!("{} × {}", c.cpus, c.cpu_model)),
            ("memory", format!("{} GiB", c.memory_gib)),
            (
                "load average (1/5/15 min) at start / end",
                format!("{} / {}", c.load_avg_start, c.load_avg_end),
            ),
            (
                "busiest processes at start (%CPU)",
                c.busiest_at_start.join(", "),
            ),
            (
                "git commit",
                format!(
                    "{}{}",
                    c.git_commit,
                    if c.git_dirty {
                        " (with uncommitted changes in the tree)"
                    } else {
                        ""
                    }
                ),
            ),
            ("build profile", c.build_profile.clone()),
            ("bench duration", format!("{} s", c.duration_s)),
        ];
        for (k, v) in rows {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        for (k, v) in &c.tools {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        md.push('\n');

        let targets = self.targets();
        if !targets.is_empty() {
            let _ = writeln!(md, "## Targets\n");
            let _ = writeln!(
                md,
                "| figure | measured (median, min – max) | target | |\n|---|---|---|---|"
            );
            for (f, t) in &targets {
                let measured = match (&f.ratio, &f.ratio_to) {
                    (Some(r), Some(to)) if t.text.contains('×') => format!(
                        "{}× {} ({} {} median)",
                        fmt_summary(r),
                        to,
                        fmt_num(f.value.median),
                        f.unit
                    ),
                    _ => format!("{} {}", fmt_summary(&f.value), f.unit),
                };
                let measured = match f.extra.get("p99") {
                    Some(p99) if t.text.contains("p99") => {
                        format!(
                            "p99 {} {}, p50 {}",
                            fmt_num(*p99),
                            f.unit,
                            fmt_num(f.value.median)
                        )
                    }
                    _ => measured,
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    f.label,
                    measured.trim(),
                    t.text,
                    if t.met { "met" } else { "**missed**" }
                );
            }
            md.push('\n');
        }

        for s in &self.sections {
            let _ = writeln!(md, "## {}\n\n{}\n", s.title, s.method.trim());
            if !s.conditions.is_empty() {
                let _ = writeln!(md, "| condition | value |\n|---|---|");
                for (k, v) in &s.conditions {
                    let _ = writeln!(md, "| {k} | {v} |");
                }
                md.push('\n');
            }
            for n in &s.notes {
                let _ = writeln!(md, "{}\n", n.trim_end());
            }
            let _ = writeln!(
                md,
                "<details><summary>All {} figures of this section</summary>\n",
                s.figures.len()
            );
            let _ = writeln!(
                md,
                "| figure | median | min | max | n | ratio (median, min – max) | target |\n|---|---|---|---|---|---|---|"
            );
            for f in &s.figures {
                let ratio = match (&f.ratio, &f.ratio_to) {
                    (Some(r), Some(to)) => format!("{}× {to}", fmt_summary(r)),
                    _ => String::new(),
                };
                let target = f
                    .target
                    .as_ref()
                    .map(|t| format!("{} ({})", t.text, if t.met { "met" } else { "missed" }))
                    .unwrap_or_default();
                let _ = writeln!(
                    md,
                    "| {} | {} {} | {} | {} | {} | {} | {} |",
                    f.label,
                    fmt_num(f.value.median),
                    f.unit,
                    fmt_num(f.value.min),
                    fmt_num(f.value.max),
                    f.value.n,
                    ratio,
                    target
                );
            }
            let _ = writeln!(md, "\n</details>\n");
        }
        md
    }

    /// Writes `<dir>/<timestamp>.md`, `<dir>/<timestamp>.json` and
    /// `<dir>/latest.md`; returns the markdown path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = self.conditions.started.replace(':', "-");
        let stem = if self.smoke {
            format!("{stem}-smoke")
        } else {
            stem
        };
        let md = self.markdown();
        let md_path = dir.join(format!("{stem}.md"));
        std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join(format!("{stem}.json")), json)?;
        std::fs::write(dir.join("latest.md"), &md)?;
        Ok(md_path)
    }
}
