//! When a probe's result cannot be trusted, and why.
//!
//! Contract: [`doubts`] looks at what the tests saw as a whole and names each reason the
//! bracket may not be the idle timeout of one box: every connection opened but the shortest
//! idle tried already failed (the path may drop everything after the handshake, or the
//! timeout is below what the probe tries), or a connection survived a longer idle than one
//! that failed. Each doubt has a stable kebab-case code (for scripts) and a sentence; a code
//! appears at most once, its sentence naming every observation behind it.

use serde::Serialize;
use std::time::Duration;

/// Why a result may not be the timeout of one box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DoubtCode {
    /// Every connection opened, and the shortest idle time tried already failed.
    FailedAtTheShortestIdle,
    /// A connection survived a longer idle time than one that failed.
    LongerIdleSurvived,
}

/// One reason not to trust the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doubt {
    pub code: DoubtCode,
    pub message: String,
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The doubts about a bracket (`survived`: the longest idle survived, zero if none;
/// `failed`: the shortest that failed) found with `shortest` the shortest idle tried;
/// `consistent`: no longer idle survived than one that failed; `beyond`: behaviour tests
/// made past the bracket that survived nonetheless (which way, and how long idle).
pub(super) fn doubts(
    survived: Duration,
    failed: Option<Duration>,
    consistent: bool,
    shortest: Duration,
    beyond: &[(&str, Duration)],
) -> Vec<Doubt> {
    let mut out = Vec::new();
    if let Some(failed) = failed {
        if survived.is_zero() && failed <= shortest {
            out.push(Doubt {
                code: DoubtCode::FailedAtTheShortestIdle,
                message: format!(
                    "every connection opened, but the shortest idle time tried ({}) already failed: the path may drop everything after the handshake, or its idle timeout is below {} (the shortest the probe tries); check that data crosses the path at all right after connecting",
                    secs(shortest),
                    secs(shortest)
                ),
            });
        }
    }
    // The search's own contradiction and the behaviour tests past the bracket are one doubt:
    // one code, once, with what each saw.
    if !consistent || !beyond.is_empty() {
        let seen: Vec<String> = beyond
            .iter()
            .map(|(way, idle)| format!("{way}: idle {} survived", secs(*idle)))
            .collect();
        let seen = if seen.is_empty() {
            String::new()
        } else {
            format!(" ({})", seen.join("; "))
        };
        out.push(Doubt {
            code: DoubtCode::LongerIdleSurvived,
            message: format!(
                "a connection survived a longer idle time than one that failed{seen}: the flows may meet different timers (several boxes, or a balancer spreading them), or something else ended the one that failed"
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// The message of the one longer-idle-survived doubt among `d` (there must be exactly one).
    fn longer_idle_message(d: &[Doubt]) -> &str {
        let longer: Vec<_> = d
            .iter()
            .filter(|d| d.code == DoubtCode::LongerIdleSurvived)
            .collect();
        assert_eq!(longer.len(), 1, "{d:?}");
        &longer[0].message
    }

    #[test]
    fn a_failure_at_the_shortest_idle_with_nothing_survived_is_doubted() {
        let d = doubts(Duration::ZERO, Some(S(1)), true, S(1), &[]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].code, DoubtCode::FailedAtTheShortestIdle);
        assert!(d[0].message.contains("below 1.0 s"), "{}", d[0].message);
    }

    #[test]
    fn a_bracket_with_a_survivor_below_a_failure_is_trusted() {
        assert!(doubts(S(3), Some(S(4)), true, S(1), &[]).is_empty());
        assert!(doubts(S(20), None, true, S(1), &[]).is_empty());
    }

    #[test]
    fn a_longer_idle_surviving_after_a_shorter_failed_is_doubted() {
        let d = doubts(S(8), Some(S(4)), false, S(1), &[]);
        assert_eq!(d[0].code, DoubtCode::LongerIdleSurvived);
        let d = doubts(S(3), Some(S(4)), true, S(1), &[("client to server", S(5))]);
        assert_eq!(d[0].code, DoubtCode::LongerIdleSurvived);
        let message = longer_idle_message(&d);
        assert!(
            message.starts_with(
                "a connection survived a longer idle time than one that failed (client to server: idle 5.0 s survived): "
            ),
            "{message}"
        );
    }

    #[test]
    fn a_contradicting_search_and_survivors_past_the_bracket_make_one_longer_idle_doubt() {
        let d = doubts(
            S(8),
            Some(S(4)),
            false,
            S(1),
            &[("client to server", S(5)), ("server to client", S(6))],
        );
        let message = longer_idle_message(&d);
        assert!(
            message.contains(
                "(client to server: idle 5.0 s survived; server to client: idle 6.0 s survived)"
            ),
            "{message}"
        );
    }

    #[test]
    fn codes_are_kebab_case_in_json() {
        let json = serde_json::to_string(&DoubtCode::FailedAtTheShortestIdle).unwrap();
        assert_eq!(json, "\"failed-at-the-shortest-idle\"");
    }
}
