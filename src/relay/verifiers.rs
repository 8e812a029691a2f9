//! Who is admin, reader or replicator on a follower, decided without the
//! tokens themselves.
//!
//! An upstream sends its followers a verifier of each of its tokens: a
//! PBKDF2-HMAC-SHA256 hash with a random salt, made when the upstream
//! starts. A follower checks a presented token against them, so app pods
//! hold no admin token, yet an admin reading through a follower still sees
//! sensitive values. A verifier does not give the token back; brute-forcing
//! it costs [`ITERATIONS`] rounds of HMAC per guess, so long random tokens
//! are safe and short ones are not.
//!
//! Checking costs those rounds too, so results are remembered (by the
//! SHA-256 of the token, never the token), and unknown tokens are checked
//! one at a time: a flood of wrong tokens costs one core at most.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::auth::{Role, TokenCheck, Tokens};
use crate::api::pb::readyd::v1 as pb;

/// The algorithm's name in verifiers.
pub const ALGORITHM: &str = "pbkdf2-hmac-sha256";
/// Rounds of HMAC per verifier.
pub const ITERATIONS: u32 = 20_000;
/// Salt bytes.
const SALT_LEN: usize = 16;
/// Hash bytes.
const HASH_LEN: usize = 32;
/// Tokens whose outcome a follower remembers; past this it starts over.
const REMEMBERED: usize = 256;

/// One verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// Whose token.
    pub role: Role,
    /// PBKDF2 rounds.
    pub iterations: NonZeroU32,
    /// Random per verifier.
    pub salt: Vec<u8>,
    /// PBKDF2(token, salt).
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("role", &self.role)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier of `token` for `role`, with a fresh salt.
    fn make(role: Role, token: &str) -> Option<Verifier> {
        let mut salt = vec![0; SALT_LEN];
        SystemRandom::new().fill(&mut salt).ok()?;
        let iterations = NonZeroU32::new(ITERATIONS)?;
        let mut hash = vec![0; HASH_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            token.as_bytes(),
            &mut hash,
        );
        Some(Verifier {
            role,
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `token` is the one this verifies (in constant time).
    fn verifies(&self, token: &str) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            token.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// The verifiers of one upstream's tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verifiers {
    /// At most one per role, but for client tokens (several).
    pub list: Vec<Verifier>,
}

impl Verifiers {
    /// Verifiers of `tokens` (an upstream's own), with fresh salts.
    pub fn of(tokens: &Tokens) -> Verifiers {
        let list = Role::ALL
            .into_iter()
            .flat_map(|role| {
                tokens
                    .secrets(role)
                    .iter()
                    .filter_map(move |secret| Verifier::make(role, secret.expose()))
            })
            .collect();
        Verifiers { list }
    }

    fn of_role(&self, role: Role) -> Option<&Verifier> {
        self.list.iter().find(|verifier| verifier.role == role)
    }
}

impl From<&Verifiers> for pb::TokenVerifiers {
    fn from(verifiers: &Verifiers) -> Self {
        pb::TokenVerifiers {
            verifiers: verifiers
                .list
                .iter()
                .map(|verifier| pb::TokenVerifier {
                    role: verifier.role.as_str().to_owned(),
                    algorithm: ALGORITHM.to_owned(),
                    iterations: verifier.iterations.get(),
                    salt: verifier.salt.clone(),
                    hash: verifier.hash.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::TokenVerifiers> for Verifiers {
    type Error = String;

    fn try_from(message: pb::TokenVerifiers) -> Result<Self, Self::Error> {
        let mut list: Vec<Verifier> = Vec::new();
        for verifier in message.verifiers {
            // A role a newer upstream has and this readyd does not know
            // grants nothing here: left out, so followers can be upgraded
            // after their upstream.
            let Some(role) = Role::from_name(&verifier.role) else {
                tracing::warn!(role = %crate::echo::truncate(&verifier.role), "the upstream sent a verifier of a role this readyd does not know; it is ignored");
                continue;
            };
            if verifier.algorithm != ALGORITHM {
                return Err(format!(
                    "a verifier made with {:?}; this readyd knows {ALGORITHM}",
                    verifier.algorithm
                ));
            }
            let iterations = NonZeroU32::new(verifier.iterations)
                .ok_or_else(|| "a verifier of zero iterations".to_owned())?;
            if verifier.hash.len() != HASH_LEN || verifier.salt.is_empty() {
                return Err("a verifier with a malformed salt or hash".to_owned());
            }
            if role != Role::Client && list.iter().any(|known| known.role == role) {
                return Err(format!("two verifiers for the {} role", role.as_str()));
            }
            list.push(Verifier {
                role,
                iterations,
                salt: verifier.salt,
                hash: verifier.hash,
            });
        }
        Ok(Verifiers { list })
    }
}

/// A follower's token check: the latest verifiers from its upstream, and
/// what it remembers of tokens it has checked.
#[derive(Debug)]
pub struct VerifiedTokens {
    /// Replaced whole when the upstream sends new ones.
    verifiers: watch::Receiver<Arc<Verifiers>>,
    /// SHA-256 of a token → the roles it has, under the verifiers current
    /// when it was checked. The lock also serialises the checking.
    remembered: Mutex<Remembered>,
}

/// Outcomes of checked tokens, by the SHA-256 of the token, valid for the
/// verifiers they were checked against.
type Remembered = (Arc<Verifiers>, HashMap<[u8; 32], Vec<Role>>);

impl VerifiedTokens {
    /// A check that follows `verifiers` as they change.
    pub fn new(verifiers: watch::Receiver<Arc<Verifiers>>) -> Arc<Self> {
        let current = Arc::clone(&verifiers.borrow());
        Arc::new(Self {
            verifiers,
            remembered: Mutex::new((current, HashMap::new())),
        })
    }

    /// The verifiers in use.
    pub fn current(&self) -> Arc<Verifiers> {
        Arc::clone(&self.verifiers.borrow())
    }

    /// The roles `token` has, checked once per token and verifier set.
    fn roles(&self, token: &str) -> Vec<Role> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let verifiers = self.current();
        let mut remembered = self
            .remembered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !Arc::ptr_eq(&remembered.0, &verifiers) {
            *remembered = (Arc::clone(&verifiers), HashMap::new());
        }
        if let Some(roles) = remembered.1.get(&digest) {
            return roles.clone();
        }
        let roles: Vec<Role> = verifiers
            .list
            .iter()
            .filter(|verifier| verifier.verifies(token))
            .map(|verifier| verifier.role)
            .collect();
        if remembered.1.len() >= REMEMBERED {
            remembered.1.clear();
        }
        remembered.1.insert(digest, roles.clone());
        roles
    }
}

impl TokenCheck for VerifiedTokens {
    fn has(&self, role: Role) -> bool {
        self.current().of_role(role).is_some()
    }

    fn matches(&self, role: Role, presented: &str) -> bool {
        self.has(role) && self.roles(presented).contains(&role)
    }

    /// From the verifiers: followers of one upstream derive the same key
    /// (not the upstream's own, which derives it from the tokens).
    fn ticket_key(&self) -> [u8; 32] {
        let verifiers = self.current();
        crate::api::auth::derive_ticket_key(
            verifiers
                .list
                .iter()
                .map(|verifier| (verifier.role, verifier.hash.as_slice())),
        )
    }
}

/// Where a follower keeps its upstream's verifiers, beside the snapshot on
/// disk: a start from that snapshot needs them to tell who is admin.
pub fn path_for(data_dir: &Path, environment: &str) -> PathBuf {
    data_dir
        .join("snapshots")
        .join(format!("{environment}.verifiers"))
}

/// The verifiers saved at `path`; `None` when there are none or the file
/// does not decode (a warning says why).
pub fn read(path: &Path) -> Option<Verifiers> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read the saved token verifiers");
            return None;
        }
    };
    let decoded = pb::TokenVerifiers::decode(bytes.as_slice())
        .map_err(|err| err.to_string())
        .and_then(Verifiers::try_from);
    match decoded {
        Ok(verifiers) => Some(verifiers),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "the saved token verifiers are ignored");
            None
        }
    }
}

/// Keeps `path` holding the latest verifiers (readable only by readyd's
/// user, written atomically) until `stop` fires.
pub async fn keep_saved(
    mut verifiers: watch::Receiver<Arc<Verifiers>>,
    path: PathBuf,
    stop: CancellationToken,
) {
    loop {
        let current = Arc::clone(&verifiers.borrow_and_update());
        if !current.list.is_empty() {
            let path = path.clone();
            let bytes = pb::TokenVerifiers::from(&*current).encode_to_vec();
            let written = tokio::task::spawn_blocking(move || {
                crate::snapshot_file::write_atomically(&path, &bytes)
            })
            .await;
            match written {
                Ok(Ok(())) => tracing::debug!("token verifiers saved to disk"),
                Ok(Err(err)) => tracing::warn!(error = %err, "could not save the token verifiers"),
                Err(err) => tracing::warn!(error = %err, "saving the token verifiers failed"),
            }
        }
        tokio::select! {
            changed = verifiers.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::authorize;
    use crate::settings::Secret;
    use tonic::Code;

    fn tokens(admin: Option<&str>, read: Option<&str>, replication: Option<&str>) -> Tokens {
        Tokens {
            admin: admin.map(Secret::new),
            read: read.map(Secret::new),
            replication: replication.map(Secret::new),
            client: Vec::new(),
        }
    }

    fn header(token: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
    }

    #[test]
    fn a_verifier_recognises_its_token_and_nothing_else() {
        let verifiers = Verifiers::of(&tokens(Some("admin-token"), None, Some("repl-token")));
        let (_keep, rx) = watch::channel(Arc::new(verifiers));
        let check = VerifiedTokens::new(rx);
        assert!(check.has(Role::Admin));
        assert!(!check.has(Role::Read));
        assert!(check.matches(Role::Admin, "admin-token"));
        assert!(!check.matches(Role::Admin, "repl-token"));
        assert!(!check.matches(Role::Admin, "admin-token "));
        assert!(check.matches(Role::Replication, "repl-token"));
        // Remembered: the same answers again.
        assert!(check.matches(Role::Admin, "admin-token"));
        assert!(!check.matches(Role::Read, "admin-token"));
    }

    #[test]
    fn a_verifier_holds_neither_the_token_nor_its_plain_hash() {
        let verifiers = Verifiers::of(&tokens(Some("admin-token"), None, None));
        let message = pb::TokenVerifiers::from(&verifiers);
        let bytes = prost::Message::encode_to_vec(&message);
        let plain: [u8; 32] = Sha256::digest(b"admin-token").into();
        assert!(!bytes.windows(11).any(|w| w == b"admin-token"));
        assert!(!bytes.windows(32).any(|w| w == plain));
        assert!(!format!("{verifiers:?}").contains("admin-token"));
    }

    #[test]
    fn verifiers_survive_the_wire_and_bad_ones_are_refused() {
        let verifiers = Verifiers::of(&tokens(Some("a"), Some("b"), Some("c")));
        let message = pb::TokenVerifiers::from(&verifiers);
        assert_eq!(Verifiers::try_from(message.clone()), Ok(verifiers));
        // A role this readyd does not know is left out, not an error.
        let mut unknown = message.clone();
        unknown.verifiers[0].role = "root".into();
        let known = Verifiers::try_from(unknown).expect("the others");
        assert_eq!(known.list.len(), 2);
        assert!(
            known
                .list
                .iter()
                .all(|verifier| verifier.role != Role::Admin)
        );
        let mut other = message.clone();
        other.verifiers[0].algorithm = "md5".into();
        assert!(Verifiers::try_from(other).is_err());
        let mut twice = message.clone();
        twice.verifiers[1].role = twice.verifiers[0].role.clone();
        assert!(Verifiers::try_from(twice).is_err());
        let mut short = message;
        short.verifiers[0].hash.truncate(3);
        assert!(Verifiers::try_from(short).is_err());
    }

    #[test]
    fn a_follower_decides_as_its_upstream_would() {
        let upstream = tokens(Some("admin-token"), Some("read-token"), Some("repl-token"));
        let (_keep, rx) = watch::channel(Arc::new(Verifiers::of(&upstream)));
        let follower = VerifiedTokens::new(rx);
        for path in [
            "/readyd.v1.FlagService/UpsertFlag",
            "/readyd.v1.ConfigService/GetConfig",
            "/readyd.v1.ReplicationService/Follow",
            "/grpc.health.v1.Health/Check",
        ] {
            for presented in [
                None,
                Some("admin-token"),
                Some("read-token"),
                Some("repl-token"),
                Some("wrong"),
            ] {
                let header = presented.map(header);
                let there = authorize(&upstream, path, header.as_ref());
                let here = authorize(&*follower, path, header.as_ref());
                assert_eq!(
                    there.as_ref().map_err(|s| s.code()),
                    here.as_ref().map_err(|s| s.code()),
                    "{path} with {presented:?}"
                );
            }
        }
        let refused = authorize(&*follower, "/readyd.v1.ReplicationService/Follow", None)
            .expect_err("needs a token");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }

    #[test]
    fn saved_verifiers_read_back_and_damage_is_ignored() {
        let dir = tempfile::tempdir().expect("dir");
        let path = path_for(dir.path(), "prod");
        assert_eq!(read(&path), None);
        let verifiers = Verifiers::of(&tokens(Some("a"), None, Some("c")));
        let bytes = pb::TokenVerifiers::from(&verifiers).encode_to_vec();
        crate::snapshot_file::write_atomically(&path, &bytes).expect("write");
        assert_eq!(read(&path), Some(verifiers));
        std::fs::write(&path, b"\xff\xff not protobuf").expect("damage");
        assert_eq!(read(&path), None);
    }

    #[test]
    fn new_verifiers_forget_what_was_remembered() {
        let (upstream, rx) =
            watch::channel(Arc::new(Verifiers::of(&tokens(Some("old"), None, None))));
        let check = VerifiedTokens::new(rx);
        assert!(check.matches(Role::Admin, "old"));
        upstream.send_replace(Arc::new(Verifiers::of(&tokens(Some("new"), None, None))));
        assert!(!check.matches(Role::Admin, "old"));
        assert!(check.matches(Role::Admin, "new"));
    }

    #[test]
    fn several_client_tokens_travel_and_unknown_roles_grant_nothing() {
        let mut upstream = tokens(Some("admin"), None, None);
        upstream.client = vec![Secret::new("web"), Secret::new("ios")];
        let mut message = pb::TokenVerifiers::from(&Verifiers::of(&upstream));
        message.verifiers.push(pb::TokenVerifier {
            role: "from-the-future".into(),
            ..message.verifiers[0].clone()
        });
        let verifiers = Verifiers::try_from(message).expect("decodes");
        assert_eq!(verifiers.list.len(), 3, "admin and two client verifiers");
        let (_keep, rx) = watch::channel(Arc::new(verifiers));
        let check = VerifiedTokens::new(rx);
        assert!(check.matches(Role::Client, "web"));
        assert!(check.matches(Role::Client, "ios"));
        assert!(!check.matches(Role::Client, "admin"));
        assert!(!check.matches(Role::Admin, "web"));
        let audience = crate::api::auth::authorize_evaluation(&*check, Some(&header("ios")));
        assert_eq!(audience.ok(), Some(crate::api::auth::Audience::Clients));
    }
}
