//! The sessions an exit ended lately, so that an entry that comes to resume one is told so.
//!
//! Contract: behind a balancer with several exits, `UnknownSession` means "not here; another
//! exit may hold it", and the entry tries again until its resume limit. An exit that held the
//! session and ended it answers for it instead: [`Ended::note`] records the end (the token, and
//! whether the session finished in order) and [`Ended::refusal`] answers a resume with
//! `Finished` or `Ended`, only for the right id and token (anything else is `UnknownSession`,
//! as before). A record is kept for `keep` (the resume limit: no entry tries longer) and there
//! are at most `max` of them; when full, a new end takes the place of the oldest record (an
//! entry asking about that one is told `UnknownSession` and gives up at its own resume limit;
//! the newest ends are the ones entries are still resuming). Records leave in the order they
//! came ([`VecDeque`]): each end costs O(1), never a pass over all of them. A record is
//! about 100 bytes (id, token, time, and the queue's copy of the id and time).

use super::frame::{Refusal, SessionId, Token};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Sessions ended lately.
pub struct Ended {
    records: HashMap<SessionId, Record>,
    /// The ids of `records`, oldest first, with the time each was noted.
    order: VecDeque<(SessionId, Instant)>,
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
            order: VecDeque::new(),
            keep,
            max: max.max(1),
        }
    }

    /// Session `id` (with `token`) ended at `now`, in order if `whole`. Records past `keep`
    /// leave; when `max` are left, the oldest leaves.
    pub fn note(&mut self, id: SessionId, token: Token, whole: bool, now: Instant) {
        while let Some(&(old, at)) = self.order.front() {
            let expired = now.saturating_duration_since(at) >= self.keep;
            if !expired && self.order.len() < self.max {
                break;
            }
            self.order.pop_front();
            // A record noted again later (the same id twice) stays until its own turn.
            if self.records.get(&old).is_some_and(|r| r.at == at) {
                self.records.remove(&old);
            }
        }
        self.order.push_back((id, now));
        self.records.insert(
            id,
            Record {
                token,
                at: now,
                whole,
            },
        );
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
    fn when_full_the_oldest_record_makes_way_for_the_newest() {
        let t0 = Instant::now();
        let mut ended = Ended::new(Duration::from_secs(10), 2);
        for i in 0..3u8 {
            let at = t0 + Duration::from_millis(u64::from(i));
            ended.note(SessionId([i; 16]), Token([i; 32]), i == 2, at);
        }
        assert_eq!(ended.records.len(), 2);
        assert_eq!(ended.order.len(), 2);
        assert_eq!(
            ended.refusal(SessionId([0; 16]), &Token([0; 32]), t0),
            Refusal::UnknownSession,
            "the oldest made way"
        );
        assert_eq!(
            ended.refusal(SessionId([1; 16]), &Token([1; 32]), t0),
            Refusal::Ended
        );
        assert_eq!(
            ended.refusal(SessionId([2; 16]), &Token([2; 32]), t0),
            Refusal::Finished,
            "the newest end is recorded"
        );
        // Once the old ones are past `keep`, they leave with the next end.
        let later = t0 + Duration::from_secs(11);
        ended.note(SessionId([4; 16]), Token([4; 32]), true, later);
        assert_eq!(ended.records.len(), 1);
        assert_eq!(ended.order.len(), 1);
        assert_eq!(
            ended.refusal(SessionId([4; 16]), &Token([4; 32]), later),
            Refusal::Finished
        );
    }

    #[test]
    fn a_full_record_keeps_its_bound_over_many_ends() {
        let t0 = Instant::now();
        let mut ended = Ended::new(Duration::from_secs(120), 1000);
        for i in 0..100_000u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            ended.note(SessionId(id), Token([1; 32]), false, t0);
        }
        assert_eq!(ended.records.len(), 1000);
        assert_eq!(ended.order.len(), 1000);
        let mut last = [0u8; 16];
        last[..4].copy_from_slice(&99_999u32.to_le_bytes());
        assert_eq!(
            ended.refusal(SessionId(last), &Token([1; 32]), t0),
            Refusal::Ended
        );
    }
}
