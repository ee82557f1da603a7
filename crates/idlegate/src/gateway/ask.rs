//! How the serving threads (the control socket's, the metrics', the API's) ask the workers: a
//! question to every worker's contact, every answer awaited (for at most the asker's
//! timeout, [`ANSWER_TIMEOUT`] unless a test says less), and the answers added up. All
//! answer, or the question fails, except a rule's change: once queued to every worker it
//! runs on every one, and the answer says how many confirmed it in time. [`Recent`] keeps an
//! answer for a while, so that however often a client asks, the workers are asked at most
//! once per while.

use super::handoff::{Answer, Contact, Query};
use super::ANSWER_TIMEOUT;
use crate::gateway::control::{FlowRow, Shards};
use crate::gateway::metrics::Snapshot;
use crate::gateway::steering::Steering;
use idlegate_core::Retiming;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// What a serving thread holds to ask the workers.
pub(super) struct Asker {
    pub(super) contacts: Vec<Contact>,
    pub(super) rule_names: Vec<String>,
    /// How long it waits for the workers' answers.
    pub(super) timeout: Duration,
    /// How packets reach their owner's queue, which snapshots tell.
    pub(super) steering: Steering,
}

impl Asker {
    pub(super) fn new(
        contacts: Vec<Contact>,
        rule_names: Vec<String>,
        steering: Steering,
    ) -> Asker {
        Asker {
            contacts,
            rule_names,
            timeout: ANSWER_TIMEOUT,
            steering,
        }
    }

    pub(super) fn view(&self) -> Ask<'_> {
        Ask {
            contacts: &self.contacts,
            rule_names: &self.rule_names,
            timeout: self.timeout,
            steering: self.steering,
        }
    }
}

/// A serving thread's view of the shards: it asks every worker and adds up the answers.
pub(super) struct Ask<'a> {
    pub(super) contacts: &'a [Contact],
    pub(super) rule_names: &'a [String],
    pub(super) timeout: Duration,
    pub(super) steering: Steering,
}

/// The answers to a question queued to every worker, as they come.
pub(super) struct Asked {
    answers: mpsc::Receiver<Answer>,
    /// How many workers it was queued to.
    pub(super) workers: usize,
}

impl Ask<'_> {
    /// Queues the question to every worker and wakes each; fails only if a worker has stopped
    /// (the gateway is stopping).
    fn send(&self, query: impl Fn() -> Query) -> Result<Asked, String> {
        let (reply, answers) = mpsc::channel();
        for contact in self.contacts {
            contact
                .queries
                .send((query(), reply.clone()))
                .map_err(|_| "a gateway worker has stopped".to_string())?;
            let _ = contact.waker.wake();
        }
        Ok(Asked {
            answers,
            workers: self.contacts.len(),
        })
    }

    /// The answers that come within the timeout (all of them, or fewer).
    fn gather(&self, asked: &Asked) -> Vec<Answer> {
        let deadline = Instant::now() + self.timeout;
        let mut got = Vec::with_capacity(asked.workers);
        while got.len() < asked.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            match asked.answers.recv_timeout(left) {
                Ok(answer) => got.push(answer),
                Err(_) => break,
            }
        }
        got
    }

    /// Asks every worker. All answer, or the question fails: a sum over some of the shards
    /// would be wrong (counters going down, an expiry count too low).
    fn ask(&self, query: impl Fn() -> Query) -> Result<Vec<Answer>, String> {
        let asked = self.send(query)?;
        let got = self.gather(&asked);
        if got.len() < asked.workers {
            let missing = asked.workers - got.len();
            return Err(format!(
                "{missing} gateway worker(s) did not answer within {:?}",
                self.timeout
            ));
        }
        Ok(got)
    }

    /// Queues `changes` to every worker, each of which runs them from its next turn (from
    /// its queue, in order: a change queued later runs later); an error only if a worker has
    /// stopped. [`Ask::confirmed`] then says how many ran them within the timeout.
    pub(super) fn retime(&self, changes: &Arc<[Retiming]>) -> Result<Asked, String> {
        self.send(|| Query::Retime(Arc::clone(changes)))
    }

    /// How many of the workers `asked` confirmed within the timeout.
    pub(super) fn confirmed(&self, asked: &Asked) -> usize {
        self.gather(asked).len()
    }

    /// At most `limit` flows, the soonest to expire of every shard's, soonest first; and how
    /// many flows the shards hold. Each worker keeps and formats at most `limit`.
    pub(super) fn soonest_flows(&self, limit: usize) -> Result<(Vec<FlowRow>, usize), String> {
        let mut rows = Vec::new();
        let mut count = 0;
        for answer in self.ask(|| Query::Flows { limit: Some(limit) })? {
            if let Answer::Flows {
                rows: mut r,
                count: n,
            } = answer
            {
                rows.append(&mut r);
                count += n;
            }
        }
        rows.sort_by(|a, b| a.expires_in_s.total_cmp(&b.expires_in_s));
        rows.truncate(limit);
        Ok((rows, count))
    }

    /// Every shard's snapshot, added up; `None` if a worker did not answer.
    pub(super) fn snapshot(&self) -> Option<Snapshot> {
        let answers = match self.ask(|| Query::Snapshot) {
            Ok(answers) => answers,
            Err(e) => {
                tracing::warn!("metrics: {e}");
                return None;
            }
        };
        let mut total = Snapshot::steered(self.steering);
        for answer in answers {
            if let Answer::Snapshot(s) = answer {
                total.merge(*s);
            }
        }
        Some(total)
    }
}

/// The last answer to a question (with `K`, what was asked), given again to whoever asks the
/// same within `keep` of it: the workers are asked at most once per `keep` however often a
/// client asks. The metrics' and the API's snapshots, and the API's flows.
pub(super) struct Recent<K, T> {
    keep: Duration,
    last: Option<(Instant, K, T)>,
}

impl<K: PartialEq, T: Clone> Recent<K, T> {
    pub(super) fn new(keep: Duration) -> Recent<K, T> {
        Recent { keep, last: None }
    }

    /// The answer to `key` from less than `keep` ago, else what `ask` answers now (kept if
    /// it is one).
    pub(super) fn get<E>(&mut self, key: K, ask: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        if let Some((at, asked, answer)) = &self.last {
            if *asked == key && at.elapsed() < self.keep {
                return Ok(answer.clone());
            }
        }
        let answer = ask()?;
        self.last = Some((Instant::now(), key, answer.clone()));
        Ok(answer)
    }

    /// Forgets the answer kept (what it said has changed).
    pub(super) fn forget(&mut self) {
        self.last = None;
    }
}

impl Shards for Ask<'_> {
    fn rule_names(&self) -> &[String] {
        self.rule_names
    }

    fn flows(&mut self) -> Result<Vec<FlowRow>, String> {
        let mut rows = Vec::new();
        for answer in self.ask(|| Query::Flows { limit: None })? {
            if let Answer::Flows { rows: mut r, .. } = answer {
                rows.append(&mut r);
            }
        }
        Ok(rows)
    }

    fn expire(&mut self, rule: Option<&str>) -> Result<usize, String> {
        let rule = rule.map(str::to_string);
        let answers = self.ask(|| Query::Expire(rule.clone()))?;
        Ok(answers
            .into_iter()
            .map(|a| match a {
                Answer::Expired(n) => n,
                _ => 0,
            })
            .sum())
    }
}
