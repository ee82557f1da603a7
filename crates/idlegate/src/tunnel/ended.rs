//! The sessions an exit ended lately, so that an entry that comes to resume one is told so.
//!
//! Contract: behind a balancer with several exits, `UnknownSession` means "not here; another
//! exit may hold it", and the entry tries again until its resume limit. An exit that held the
//! session and ended it answers for it instead: [`Ended::note`] records the end (the token, and
//! whether the session finished in order) and [`Ended::refusal`] answers a resume with
//! `Finished` or `Ended`, only for the right id and token (anything else is `UnknownSession`,
//! as before). A record is kept for `keep` (the resume limit: no entry tries longer) and there
//! are at most `max` of them; when that many are younger than `keep`, an end is not recorded,
//! and an entry that asks is told `UnknownSession` and gives up at its own resume limit.

use super::frame::{Refusal, SessionId, Token};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Sessions ended lately.
pub struct Ended {
    records: HashMap<SessionId, Record>,
    keep: Duration,
    max: usize,
}

struct Record {
    token: Token,
    at: Instant,
    /// Finished in order (both FINs and every byte acknowledged).
    whole: bool,
}

impl Ended {
    pub fn new(keep: Duration, max: usize) -> Ended {
        Ended {
            records: HashMap::new(),
            keep,
            max,
        }
    }

    /// Session `id` (with `token`) ended at `now`, in order if `whole`.
    pub fn note(&mut self, id: SessionId, token: Token, whole: bool, now: Instant) {
        if self.records.len() >= self.max {
            let keep = self.keep;
            self.records
                .retain(|_, r| now.saturating_duration_since(r.at) < keep);
        }
        if self.records.len() < self.max {
            self.records.insert(
                id,
                Record {
                    token,
                    at: now,
                    whole,
                },
            );
        }
    }

    /// The answer to a resume of `id` with `token` that no live session here matched.
    pub fn refusal(&self, id: SessionId, token: &Token, now: Instant) -> Refusal {
        match self.records.get(&id) {
            Some(r)
                if now.saturating_duration_since(r.at) < self.keep && r.token.matches(token) =>
            {
                if r.whole {
                    Refusal::Finished
                } else {
                    Refusal::Ended
                }
            }
            _ => Refusal::UnknownSession,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_token_learns_how_a_session_ended_and_only_for_a_while() {
        let t0 = Instant::now();
        let mut ended = Ended::new(Duration::from_secs(10), 2);
        let (a, b) = (SessionId([1; 16]), SessionId([2; 16]));
        ended.note(a, Token([7; 32]), false, t0);
        ended.note(b, Token([8; 32]), true, t0);
        assert_eq!(ended.refusal(a, &Token([7; 32]), t0), Refusal::Ended);
        assert_eq!(ended.refusal(b, &Token([8; 32]), t0), Refusal::Finished);
        assert_eq!(
            ended.refusal(a, &Token([8; 32]), t0),
            Refusal::UnknownSession,
            "a wrong token"
        );
        assert_eq!(
            ended.refusal(SessionId([3; 16]), &Token([7; 32]), t0),
            Refusal::UnknownSession,
            "never here"
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            ended.refusal(a, &Token([7; 32]), later),
            Refusal::UnknownSession
        );
    }

    #[test]
    fn the_records_stay_within_their_bound() {
        let t0 = Instant::now();
        let mut ended = Ended::new(Duration::from_secs(10), 2);
        for i in 0..3u8 {
            ended.note(SessionId([i; 16]), Token([i; 32]), false, t0);
        }
        assert_eq!(ended.records.len(), 2);
        assert_eq!(
            ended.refusal(SessionId([2; 16]), &Token([2; 32]), t0),
            Refusal::UnknownSession,
            "not recorded while the others are young"
        );
        // Once the old ones are past `keep`, a new end takes their place.
        let later = t0 + Duration::from_secs(11);
        ended.note(SessionId([4; 16]), Token([4; 32]), true, later);
        assert_eq!(ended.records.len(), 1);
        assert_eq!(
            ended.refusal(SessionId([4; 16]), &Token([4; 32]), later),
            Refusal::Finished
        );
    }
}
