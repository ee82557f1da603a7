//! The one writer of Prometheus's text exposition format (version 0.0.4), for every command
//! that serves metrics; [`crate::obs::scrape`] serves what it writes.
//!
//! Contract: a [`Writer`] writes metric families in the order they are opened, each as one
//! `# HELP` line, one `# TYPE` line and then its samples, one per line
//! (`name{label="value",...} value`; no braces when there are no labels). A family is opened
//! once per exposition (the format requires all lines of a family to be together);
//! opening a name twice is a bug of the caller, caught in debug builds. Label values are
//! escaped as the format says (`\` as `\\`, `"` as `\"`, a newline as `\n`); the help text
//! escapes `\` and newline. Metric and label names are the caller's constants, written as
//! given. Specification: <https://prometheus.io/docs/instrumenting/exposition_formats/>.
//!
//! Written by hand: a few lines of text over values idlegate already counts, which a metrics
//! library would only copy into its own registry.

use std::fmt::Write as _;

/// A metric family's type, as its `# TYPE` line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (until the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One exposition being written.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
    /// The families opened so far, to catch one opened twice.
    #[cfg(debug_assertions)]
    opened: Vec<String>,
}

/// A family opened in a [`Writer`]: its samples follow its `# HELP` and `# TYPE` lines.
pub struct Family<'w> {
    out: &'w mut String,
    name: &'w str,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Writes the `# HELP` and `# TYPE` lines of the family `name`; its samples go to the
    /// [`Family`] returned (none is fine: the family is still announced).
    pub fn family<'w>(&'w mut self, name: &'w str, kind: Kind, help: &str) -> Family<'w> {
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                !self.opened.iter().any(|n| n == name),
                "metric family {name} written twice"
            );
            self.opened.push(name.to_string());
        }
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(&mut self.out, help);
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.as_str());
        Family {
            out: &mut self.out,
            name,
        }
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        self.out
    }
}

impl Family<'_> {
    /// One sample: `labels` as (name, value) pairs in the order given, then `value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: u64) -> &mut Self {
        self.labels(labels);
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// One sample with a float value (seconds, a timestamp): as [`Family::sample`].
    pub fn sample_f64(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.labels(labels);
        if value.is_nan() {
            self.out.push_str(" NaN\n");
        } else if value.is_infinite() {
            self.out
                .push_str(if value > 0.0 { " +Inf\n" } else { " -Inf\n" });
        } else {
            let _ = writeln!(self.out, " {value}");
        }
        self
    }

    /// The metric name and its labels, up to the value.
    fn labels(&mut self, labels: &[(&str, &str)]) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A help text as the format wants it: backslash and newline escaped (a quote stays).
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline_per_exposition_format_0_0_4() {
        let mut w = Writer::new();
        w.family("m", Kind::Gauge, "h")
            .sample(&[("rule", "a\\b \"c\"\nd")], 1);
        assert_eq!(
            w.finish(),
            "# HELP m h\n# TYPE m gauge\nm{rule=\"a\\\\b \\\"c\\\"\\nd\"} 1\n"
        );
    }

    #[test]
    fn help_escapes_backslash_and_newline_but_not_quote_per_exposition_format_0_0_4() {
        let mut w = Writer::new();
        w.family("m", Kind::Counter, "a \\ \"b\"\nc");
        assert_eq!(w.finish(), "# HELP m a \\\\ \"b\"\\nc\n# TYPE m counter\n");
    }

    #[test]
    fn each_family_is_announced_once_before_all_its_samples() {
        let mut w = Writer::new();
        let mut f = w.family("x_total", Kind::Counter, "Xs.");
        for (listen, n) in [("127.0.0.1:1", "1"), ("[fd00::1]:2", "2")] {
            f.sample(
                &[("listen", listen), ("direction", "in")],
                n.parse().unwrap(),
            );
        }
        w.family("y", Kind::Gauge, "Ys.").sample(&[], 0);
        w.family("z", Kind::Gauge, "Zs, none now.");
        let text = w.finish();
        assert_eq!(
            text,
            "# HELP x_total Xs.\n# TYPE x_total counter\n\
             x_total{listen=\"127.0.0.1:1\",direction=\"in\"} 1\n\
             x_total{listen=\"[fd00::1]:2\",direction=\"in\"} 2\n\
             # HELP y Ys.\n# TYPE y gauge\ny 0\n\
             # HELP z Zs, none now.\n# TYPE z gauge\n"
        );
        for name in ["x_total", "y", "z"] {
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1);
            assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1);
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "metric family y written twice")]
    fn a_family_opened_twice_is_caught() {
        let mut w = Writer::new();
        w.family("y", Kind::Gauge, "Ys.").sample(&[], 1);
        w.family("y", Kind::Gauge, "Ys.").sample(&[], 2);
    }

    #[test]
    fn float_values_are_plain_decimals_and_the_formats_special_values() {
        let mut w = Writer::new();
        let mut f = w.family("s_seconds", Kind::Gauge, "Seconds.");
        for v in [
            0.0,
            240.0,
            1.25,
            1_764_000_000.5,
            0.000_001,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            f.sample_f64(&[("k", "v")], v);
        }
        let text = w.finish();
        let values: Vec<&str> = text
            .lines()
            .skip(2)
            .map(|l| l.rsplit_once(' ').unwrap().1)
            .collect();
        assert_eq!(
            values,
            [
                "0",
                "240",
                "1.25",
                "1764000000.5",
                "0.000001",
                "NaN",
                "+Inf",
                "-Inf"
            ]
        );
        assert!(text.contains("\ns_seconds{k=\"v\"} 1.25\n"));
    }

    #[test]
    fn values_are_written_in_full() {
        let mut w = Writer::new();
        w.family("b_total", Kind::Counter, "Bytes.")
            .sample(&[], u64::MAX);
        assert!(w.finish().ends_with("\nb_total 18446744073709551615\n"));
    }
}
