//! Each test a probe made, as its report lists it (`tried` in `probe --json`, the marks of
//! `probe --html`): which way it sent after the idle period, how long it idled, in which part
//! of the search, and what it saw; and [`directions_differ`], which says why one direction's
//! own bracket is not the report's.

use serde::Serialize;

/// Which way a test sent after its idle period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Way {
    ClientToServer,
    ServerToClient,
}

/// The part of the search a test belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// Round 1: geometric idle times until the first dead one.
    Coarse,
    /// Round 2: idle times splitting the bracket.
    Fine,
    /// Round 2: past the bracket, to see what the box does at expiry.
    Behaviour,
    /// Round 2: past the bracket with TCP keepalive, to see whether it refreshes the flow.
    Keepalive,
}

/// One test and what it saw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tried {
    pub direction: Way,
    /// How long the connection idled before the test.
    pub idle_s: f64,
    /// The test's TCP keepalive interval; `null` without.
    pub keepalive_s: Option<f64>,
    pub part: Part,
    /// Whether the connection still worked after the idle period.
    pub alive: bool,
    /// What the test saw: `alive`, `reset-at-expiry`, `reset-on-next`, `silent`,
    /// `acked-not-delivered`, `server-reset`, `icmp`, `closed` or `confirmation-lost`.
    pub seen: &'static str,
}

/// Why one direction's own bracket differs from the report's, in one line per direction, or
/// nothing when they agree. The report's bracket counts an idle time as survived only when
/// every test at it survived, so a direction that survived an idle time at or past the
/// bracket's upper end (`high`) did so where the other direction failed: at the edge, the two
/// tests raced the box's timer; past it, the box may time the directions differently. Only
/// the search's own tests (coarse and fine) count, and only a `consistent` result: otherwise
/// the `longer-idle-survived` doubt says it.
pub fn directions_differ(tried: &[Tried], high: Option<f64>, consistent: bool) -> Vec<String> {
    let Some(high) = high.filter(|_| consistent) else {
        return Vec::new();
    };
    let name = |way| match way {
        Way::ClientToServer => "client to server",
        Way::ServerToClient => "server to client",
    };
    let mut out = Vec::new();
    for (way, other) in [
        (Way::ClientToServer, Way::ServerToClient),
        (Way::ServerToClient, Way::ClientToServer),
    ] {
        let own: Vec<&Tried> = tried
            .iter()
            .filter(|t| t.direction == way && matches!(t.part, Part::Coarse | Part::Fine))
            .collect();
        let Some(survived) = own
            .iter()
            .filter(|t| t.alive)
            .map(|t| t.idle_s)
            .reduce(f64::max)
        else {
            continue;
        };
        if survived < high - 1e-9 {
            continue;
        }
        let failed = own
            .iter()
            .filter(|t| !t.alive && t.idle_s > survived)
            .map(|t| t.idle_s)
            .reduce(f64::min);
        let own_bracket = match failed {
            Some(f) => format!("its own bracket ({survived:.1} s, {f:.1} s]"),
            None => "it failed at no idle time tried".to_string(),
        };
        let why = if survived <= high + 1e-9 {
            "at the bracket's upper edge: the tests at that idle time raced the box's timer"
        } else {
            "past the bracket: the box may time the two directions differently"
        };
        out.push(format!(
            "{} survived {survived:.1} s ({own_bracket}), {why}; the bracket counts an idle time as survived only when {} survived it too",
            name(way),
            name(other)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(direction: Way, idle_s: f64, part: Part, alive: bool) -> Tried {
        Tried {
            direction,
            idle_s,
            keepalive_s: None,
            part,
            alive,
            seen: if alive { "alive" } else { "silent" },
        }
    }

    /// What a probe of a box with a 4 s timer saw: client to server (3, 4], server to client
    /// (4, 5]; the report's bracket is (3, 4].
    fn raced() -> Vec<Tried> {
        let mut out = Vec::new();
        for (idle, c2s, s2c) in [(2.0, true, true), (3.0, true, true), (4.0, false, true)] {
            out.push(t(Way::ClientToServer, idle, Part::Coarse, c2s));
            out.push(t(Way::ServerToClient, idle, Part::Coarse, s2c));
        }
        out.push(t(Way::ServerToClient, 5.0, Part::Coarse, false));
        out.push(t(Way::ServerToClient, 5.0, Part::Behaviour, false));
        out
    }

    #[test]
    fn a_direction_that_survived_the_brackets_upper_edge_is_explained() {
        assert_eq!(
            directions_differ(&raced(), Some(4.0), true),
            vec!["server to client survived 4.0 s (its own bracket (4.0 s, 5.0 s]), at the bracket's upper edge: the tests at that idle time raced the box's timer; the bracket counts an idle time as survived only when client to server survived it too".to_string()]
        );
    }

    #[test]
    fn a_direction_that_survived_past_the_bracket_is_explained() {
        let mut tried = raced();
        tried.push(t(Way::ClientToServer, 5.0, Part::Coarse, false));
        tried.retain(|x| !(x.direction == Way::ServerToClient && x.idle_s == 5.0));
        tried.push(t(Way::ServerToClient, 5.0, Part::Coarse, true));
        let lines = directions_differ(&tried, Some(4.0), true);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("server to client survived 5.0 s (it failed at no idle time tried), past the bracket: the box may time the two directions differently"), "{lines:?}");
    }

    #[test]
    fn directions_that_agree_or_an_inconsistent_result_say_nothing_here() {
        let agree: Vec<Tried> = raced()
            .into_iter()
            .filter(|x| x.idle_s < 4.0 || !x.alive)
            .chain([t(Way::ServerToClient, 4.0, Part::Coarse, false)])
            .collect();
        assert!(directions_differ(&agree, Some(4.0), true).is_empty());
        assert!(directions_differ(&raced(), Some(4.0), false).is_empty());
        assert!(directions_differ(&raced(), None, true).is_empty());
    }
}
