//! Where a readyd's data comes from: its database (through the change
//! listener) or, on a follower, its upstream readyd (through a Follow
//! stream). This is the one seam between the two modes: both feed the same
//! [`State`](crate::state::State), and everything above it (streams,
//! evaluation, health, the snapshot on disk, STALE) is the same.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::auth::{TokenCheck, Tokens};
use crate::client::channel::RetryingChannel;
use crate::embedded_pg::EmbeddedPostgres;
use crate::relay::coverage::Coverage;
use crate::relay::follower::{Followed, Follower};
use crate::relay::verifiers::{VerifiedTokens, Verifiers};
use crate::settings::Secret;
use crate::state::State;
use crate::store::Store;
use crate::store::listener::ChangeListener;

/// A readyd's source of data, ready to run.
#[derive(Debug)]
pub enum Source {
    /// A database.
    Database {
        /// The connected (or lazily connecting) database.
        store: Store,
        /// The private PostgreSQL, when readyd runs its own.
        private_pg: Option<EmbeddedPostgres>,
        /// The change listener (not yet running).
        changes: ChangeListener,
    },
    /// An upstream readyd (this one is a follower).
    Upstream(Upstream),
}

/// A follower's side of its upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Follows the upstream (not yet running).
    pub follower: Follower,
    /// The stream start-up opened, to carry on with; `None` when start-up
    /// served the snapshot on disk instead.
    pub first: Option<Followed>,
    /// The connection, shared by the Follow stream, forwarded calls, the
    /// upstream check and health history.
    pub channel: RetryingChannel,
    /// The environments held and wanted.
    pub coverage: Arc<Coverage>,
    /// The upstream's token verifiers, as they arrive.
    pub verifiers: watch::Receiver<Arc<Verifiers>>,
    /// The replication token this follower presents.
    pub token: Secret,
}

impl Source {
    /// The database, when the source is one.
    pub fn store(&self) -> Option<&Store> {
        match self {
            Source::Database { store, .. } => Some(store),
            Source::Upstream(_) => None,
        }
    }
}

/// Keeps `state` current from a source until `shutdown` fires.
#[derive(Debug)]
pub enum Feed {
    /// The change listener.
    Database(ChangeListener),
    /// The Follow stream, and the stream start-up opened.
    Upstream(Box<(Follower, Option<Followed>)>),
}

impl Feed {
    /// Runs until `shutdown`.
    pub async fn run(self, state: Arc<State>, shutdown: CancellationToken) {
        match self {
            Feed::Database(changes) => changes.run(state, shutdown).await,
            Feed::Upstream(upstream) => {
                let (follower, first) = *upstream;
                follower.run(state, first, shutdown).await;
            }
        }
    }
}

/// What serving needs from a source.
#[derive(Debug)]
pub struct Parts {
    /// The database, when there is one.
    pub store: Option<Store>,
    /// The private PostgreSQL, to stop last.
    pub private_pg: Option<EmbeddedPostgres>,
    /// What keeps the state current.
    pub feed: Feed,
    /// Who may do what.
    pub tokens: Arc<dyn TokenCheck>,
    /// The verifiers followers of this readyd get.
    pub verifiers: watch::Receiver<Arc<Verifiers>>,
    /// Keeps `verifiers` open when they never change (a database).
    pub verifiers_source: Option<watch::Sender<Arc<Verifiers>>>,
    /// Which environments are held; `None`: all (a database).
    pub coverage: Option<Arc<Coverage>>,
    /// A follower's connection to its upstream and the token it presents.
    pub upstream: Option<(RetryingChannel, Secret)>,
}

impl Source {
    /// Splits the source into what serving needs. A readyd with a database
    /// checks tokens itself (`tokens`) and hands followers verifiers of
    /// them; a follower checks tokens against its upstream's verifiers.
    pub fn into_parts(self, tokens: Tokens) -> Parts {
        match self {
            Source::Database {
                store,
                private_pg,
                changes,
            } => {
                let (verifiers_source, verifiers) =
                    watch::channel(Arc::new(Verifiers::of(&tokens)));
                Parts {
                    store: Some(store),
                    private_pg,
                    feed: Feed::Database(changes),
                    tokens: Arc::new(tokens),
                    verifiers,
                    verifiers_source: Some(verifiers_source),
                    coverage: None,
                    upstream: None,
                }
            }
            Source::Upstream(upstream) => {
                let Upstream {
                    follower,
                    first,
                    channel,
                    coverage,
                    verifiers,
                    token,
                } = upstream;
                Parts {
                    store: None,
                    private_pg: None,
                    feed: Feed::Upstream(Box::new((follower, first))),
                    tokens: VerifiedTokens::new(verifiers.clone()),
                    verifiers,
                    verifiers_source: None,
                    coverage: Some(coverage),
                    upstream: Some((channel, token)),
                }
            }
        }
    }
}
