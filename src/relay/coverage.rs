//! Which environments' configuration rows a readyd holds.
//!
//! A readyd with a database holds them all. A follower holds its own
//! environment's rows and `*`, plus those of the environments its own
//! followers ask for: when a follower of another environment follows it,
//! it asks its upstream again for the wider set (a fresh snapshot) and the
//! new follower waits until that has arrived.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::watch;
use tonic::Status;

/// How long a Follow stream waits for its upstream to add environments.
const WIDEN_WAIT: Duration = Duration::from_secs(30);

/// The environments a follower holds and the ones it has been asked for.
#[derive(Debug)]
pub struct Coverage {
    /// Held now (the last snapshot's set).
    held: watch::Sender<BTreeSet<String>>,
    /// Asked for: held, plus environments of followers waiting for them.
    wanted: watch::Sender<BTreeSet<String>>,
}

impl Coverage {
    /// A follower of `environment`, holding nothing yet.
    pub fn new(environment: &str) -> Self {
        let wanted = BTreeSet::from([environment.to_owned()]);
        Self {
            held: watch::Sender::new(BTreeSet::new()),
            wanted: watch::Sender::new(wanted),
        }
    }

    /// The environments to ask the upstream for.
    pub fn wanted(&self) -> BTreeSet<String> {
        self.wanted.borrow().clone()
    }

    /// Wakes when the wanted set grows.
    pub fn wanted_changes(&self) -> watch::Receiver<BTreeSet<String>> {
        self.wanted.subscribe()
    }

    /// A snapshot holding `environments` arrived.
    pub fn now_holds(&self, environments: BTreeSet<String>) {
        self.held.send_replace(environments);
    }

    /// Whether every one of `environments` is held.
    pub fn holds(&self, environments: &BTreeSet<String>) -> bool {
        environments.is_subset(&self.held.borrow())
    }

    /// Makes sure `environments` are held, asking the upstream for them if
    /// needed and waiting until they arrive.
    pub async fn hold(&self, environments: &BTreeSet<String>) -> Result<(), Status> {
        if self.holds(environments) {
            return Ok(());
        }
        self.wanted.send_if_modified(|wanted| {
            let before = wanted.len();
            wanted.extend(environments.iter().cloned());
            wanted.len() != before
        });
        let mut held = self.held.subscribe();
        let arrived = tokio::time::timeout(
            WIDEN_WAIT,
            held.wait_for(|held| environments.is_subset(held)),
        )
        .await;
        match arrived {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Status::unavailable(format!(
                "this readyd does not hold the configuration of {} yet (its own upstream has not sent it); retry",
                environments
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_new_environment_is_asked_for_and_waited_for() {
        let coverage = std::sync::Arc::new(Coverage::new("prod"));
        coverage.now_holds(set(&["prod"]));
        assert!(coverage.holds(&set(&["prod"])));
        let mut wanted = coverage.wanted_changes();
        wanted.borrow_and_update();
        let waiting = {
            let coverage = std::sync::Arc::clone(&coverage);
            tokio::spawn(async move { coverage.hold(&set(&["staging"])).await })
        };
        wanted.changed().await.expect("asked");
        assert_eq!(coverage.wanted(), set(&["prod", "staging"]));
        coverage.now_holds(set(&["prod", "staging"]));
        waiting.await.expect("task").expect("held now");
    }
}
