//! How the serving threads (the control socket's, the metrics') ask the workers: a question
//! to every worker's contact, every answer awaited (for at most [`ANSWER_TIMEOUT`]), and the
//! answers added up. All answer, or the question fails.

use super::handoff::{Answer, Contact, Query};
use super::ANSWER_TIMEOUT;
use crate::gateway::control::{FlowRow, Shards};
use crate::gateway::metrics::Snapshot;
use std::sync::mpsc;
use std::time::Instant;

/// What the metrics thread holds to ask the workers.
pub(super) struct Asker {
    pub(super) contacts: Vec<Contact>,
    pub(super) rule_names: Vec<String>,
}

impl Asker {
    pub(super) fn view(&self) -> Ask<'_> {
        Ask {
            contacts: &self.contacts,
            rule_names: &self.rule_names,
        }
    }
}

/// A serving thread's view of the shards: it asks every worker and adds up the answers.
pub(super) struct Ask<'a> {
    pub(super) contacts: &'a [Contact],
    pub(super) rule_names: &'a [String],
}

impl Ask<'_> {
    /// Asks every worker. All answer, or the question fails: a sum over some of the shards
    /// would be wrong (counters going down, an expiry count too low).
    fn ask(&self, query: impl Fn() -> Query) -> Result<Vec<Answer>, String> {
        let (reply, answers) = mpsc::channel();
        for contact in self.contacts {
            contact
                .queries
                .send((query(), reply.clone()))
                .map_err(|_| "a gateway worker has stopped".to_string())?;
            let _ = contact.waker.wake();
        }
        drop(reply);
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut got = Vec::with_capacity(self.contacts.len());
        while got.len() < self.contacts.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match answers.recv_timeout(left) {
                Ok(answer) => got.push(answer),
                Err(_) => {
                    let missing = self.contacts.len() - got.len();
                    return Err(format!(
                        "{missing} gateway worker(s) did not answer within {ANSWER_TIMEOUT:?}"
                    ));
                }
            }
        }
        Ok(got)
    }

    /// Makes every worker run `config`'s idle settings from now on.
    pub(super) fn retime(
        &self,
        config: &std::sync::Arc<idlegate_core::Config>,
    ) -> Result<(), String> {
        self.ask(|| Query::Retime(std::sync::Arc::clone(config)))
            .map(|_| ())
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
        let mut total = Snapshot::default();
        for answer in answers {
            if let Answer::Snapshot(s) = answer {
                total.merge(*s);
            }
        }
        Some(total)
    }
}

impl Shards for Ask<'_> {
    fn rule_names(&self) -> &[String] {
        self.rule_names
    }

    fn flows(&mut self) -> Result<Vec<FlowRow>, String> {
        let mut rows = Vec::new();
        for answer in self.ask(|| Query::Flows)? {
            if let Answer::Flows(mut r) = answer {
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
