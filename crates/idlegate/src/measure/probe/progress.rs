//! The probe's progress: what each direction's timing tests have shown so far, and when the
//! round should end.
//!
//! Contract: each direction is said on its own (`client to server`, `server to client`), in
//! the report's convention: the longest idle a connection survived, the shortest it did not,
//! and the timeout between them, `(survived, failed]`. A bracket is shown only when it holds
//! something (survived < failed); outcomes that contradict each other are said to. On a
//! terminal the line is rewritten in place; elsewhere (a log) a line is written each time
//! what is known changes.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{Duration, Instant};

/// Where the probe's progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressTo {
    /// Nowhere.
    Off,
    /// One line on stderr, rewritten in place.
    Terminal,
    /// A line on stderr each time what is known changes.
    Lines,
}

impl ProgressTo {
    /// A terminal's rewritten line when stderr is one, else lines.
    pub fn stderr() -> ProgressTo {
        if io::IsTerminal::is_terminal(&io::stderr()) {
            ProgressTo::Terminal
        } else {
            ProgressTo::Lines
        }
    }
}

/// What one direction's timing tests have shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Known {
    /// The longest idle time a connection survived.
    pub(super) survived: Option<Duration>,
    /// The shortest idle time a connection did not survive.
    pub(super) failed: Option<Duration>,
}

impl Known {
    pub(super) fn saw(&mut self, idle: Duration, alive: bool) {
        let slot = if alive {
            &mut self.survived
        } else {
            &mut self.failed
        };
        *slot = Some(match (*slot, alive) {
            (Some(had), true) => had.max(idle),
            (Some(had), false) => had.min(idle),
            (None, _) => idle,
        });
    }

    /// In words: what survived, what failed, and where that puts the timeout.
    pub(super) fn text(&self) -> String {
        let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        match (self.survived, self.failed) {
            (None, None) => "no test ended yet".to_string(),
            (Some(a), None) => format!("survived {}: timeout > {}", s(a), s(a)),
            (None, Some(f)) => format!("failed at {}: timeout ≤ {}", s(f), s(f)),
            (Some(a), Some(f)) if a < f => format!(
                "survived {}, failed at {}: timeout in ({}, {}]",
                s(a),
                s(f),
                s(a),
                s(f)
            ),
            (Some(a), Some(f)) => format!(
                "survived {} but failed at {}: contradictory (flows meeting different timers?)",
                s(a),
                s(f)
            ),
        }
    }
}

/// Which round runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Round {
    /// Geometric idle times until the first failure.
    Coarse,
    /// The bracket split at the resolution, and the behaviour and keepalive tests.
    Fine,
}

impl Round {
    fn name(self) -> &'static str {
        match self {
            Round::Coarse => "round 1, coarse",
            Round::Fine => "round 2, fine and behaviour",
        }
    }
}

/// The progress of one probe.
pub(super) struct Progress {
    to: ProgressTo,
    started: Instant,
    /// What the last line said (without its clocks): a log gets a line only on a change.
    last: String,
}

impl Progress {
    pub(super) fn new(to: ProgressTo, started: Instant) -> Progress {
        Progress {
            to,
            started,
            last: String::new(),
        }
    }

    /// What is known in `round`: the client-to-server tests, and the server-to-client ones
    /// when they are made.
    pub(super) fn line(round: Round, c2s: &Known, s2c: Option<&Known>) -> String {
        let mut out = format!("[{}] client to server: {}", round.name(), c2s.text());
        if let Some(s2c) = s2c {
            let _ = write!(out, "; server to client: {}", s2c.text());
        }
        out
    }

    /// Says what is known, the round's last test due at `ends`.
    pub(super) fn show(&mut self, round: Round, c2s: &Known, s2c: Option<&Known>, ends: Instant) {
        let known = Progress::line(round, c2s, s2c);
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = ends.saturating_duration_since(Instant::now()).as_secs();
        let mut err = io::stderr().lock();
        match self.to {
            ProgressTo::Off => return,
            ProgressTo::Terminal => {
                let _ = write!(
                    err,
                    "\r\x1b[K{known} · {elapsed:.0} s elapsed · this round ends in ≤ {left} s"
                );
            }
            ProgressTo::Lines if known == self.last => return,
            ProgressTo::Lines => {
                let _ = writeln!(err, "probe: {known} ({elapsed:.0} s elapsed)");
            }
        }
        let _ = err.flush();
        self.last = known;
    }

    /// Ends the rewritten line.
    pub(super) fn done(&self) {
        if self.to == ProgressTo::Terminal {
            let _ = writeln!(io::stderr(), "\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(survived: Option<u64>, failed: Option<u64>) -> Known {
        Known {
            survived: survived.map(Duration::from_secs),
            failed: failed.map(Duration::from_secs),
        }
    }

    #[test]
    fn each_direction_is_said_on_its_own_and_the_bracket_is_survived_then_failed() {
        let line = Progress::line(
            Round::Coarse,
            &known(Some(4), None),
            Some(&known(Some(3), Some(4))),
        );
        assert_eq!(
            line,
            "[round 1, coarse] client to server: survived 4.0 s: timeout > 4.0 s; \
             server to client: survived 3.0 s, failed at 4.0 s: timeout in (3.0 s, 4.0 s]"
        );
    }

    #[test]
    fn an_empty_or_inverted_bracket_is_never_shown_but_called_contradictory() {
        for k in [known(Some(4), Some(4)), known(Some(8), Some(4))] {
            let text = k.text();
            assert!(!text.contains("timeout in"), "{text}");
            assert!(text.contains("contradictory"), "{text}");
        }
    }

    #[test]
    fn a_direction_that_failed_at_once_says_the_timeout_is_at_most_that() {
        let mut k = Known::default();
        k.saw(Duration::from_secs(2), false);
        k.saw(Duration::from_secs(1), false);
        assert_eq!(k.text(), "failed at 1.0 s: timeout ≤ 1.0 s");
        k.saw(Duration::from_millis(500), true);
        assert_eq!(
            k.text(),
            "survived 0.5 s, failed at 1.0 s: timeout in (0.5 s, 1.0 s]"
        );
    }
}
