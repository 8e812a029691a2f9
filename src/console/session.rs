//! Console sessions: a signed cookie, so nothing is stored and every
//! replica with the same tokens accepts it (the key derives from them, so
//! a new token signs everyone out).
//!
//! The cookie holds who signed in (the role of the token they gave, never
//! the token) and the name that becomes the actor of their changes, until
//! when, and a random nonce; an HMAC-SHA256 over all of it. The CSRF token
//! of a session is an HMAC of its nonce under the same key: a page gets it
//! from the session endpoint (which only a same-site request can read) and
//! sends it back in a header with every change.

use crate::api::auth::{hex, mac_hex};

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Signed in with the admin token: every page, every change, sensitive
    /// values.
    Admin,
    /// Signed in with the read token: every page, read-only, sensitive
    /// values masked.
    Read,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Admin => "admin",
            Access::Read => "read",
        }
    }

    fn from_name(name: &str) -> Option<Access> {
        match name {
            "admin" => Some(Access::Admin),
            "read" => Some(Access::Read),
            _ => None,
        }
    }
}

/// One signed-in person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// What they may do.
    pub access: Access,
    /// Their name: the actor of every change they make.
    pub actor: String,
    /// Unix seconds after which the session is over.
    pub expires: u64,
    /// Random: tells two sessions of one person apart, and keys the CSRF
    /// token.
    pub nonce: [u8; 16],
}

/// Longest actor name, in bytes.
pub const MAX_ACTOR_BYTES: usize = 64;

/// Why a name cannot be an actor, or `None` when it can.
pub fn actor_problem(actor: &str) -> Option<&'static str> {
    if actor.trim().is_empty() {
        Some("a name is needed: it is recorded as the actor of every change you make")
    } else if actor.len() > MAX_ACTOR_BYTES {
        Some("the name is longer than 64 bytes")
    } else if !actor.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        // It travels as the actor header of the calls the console makes.
        Some("the name must be printable ASCII (letters, digits, punctuation, spaces)")
    } else {
        None
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn sign(key: &[u8; 32], domain: &str, text: &str) -> String {
    mac_hex(key, &[domain.as_bytes(), b"\0", text.as_bytes()], 32)
}

/// The cookie value of `session`: `<access>.<expires>.<nonce>.<actor>.<mac>`,
/// the actor hex-encoded (so it holds no separator and needs no quoting).
pub fn seal(key: &[u8; 32], session: &Session) -> String {
    let text = format!(
        "{}.{}.{}.{}",
        session.access.as_str(),
        session.expires,
        hex(&session.nonce),
        hex(session.actor.as_bytes())
    );
    let mac = sign(key, "console session", &text);
    format!("{text}.{mac}")
}

/// The session `cookie` holds, when it was sealed under `key` and is not
/// over at `now` (Unix seconds).
pub fn open(key: &[u8; 32], cookie: &str, now: u64) -> Option<Session> {
    let (text, mac) = cookie.rsplit_once('.')?;
    let expected = sign(key, "console session", text);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        mac.as_bytes(),
        expected.as_bytes(),
    )) {
        return None;
    }
    let mut parts = text.split('.');
    let access = Access::from_name(parts.next()?)?;
    let expires: u64 = parts.next()?.parse().ok()?;
    let nonce: [u8; 16] = unhex(parts.next()?)?.try_into().ok()?;
    let actor = String::from_utf8(unhex(parts.next()?)?).ok()?;
    if parts.next().is_some() || now >= expires {
        return None;
    }
    Some(Session {
        access,
        actor,
        expires,
        nonce,
    })
}

/// The CSRF token of `session`.
pub fn csrf_token(key: &[u8; 32], session: &Session) -> String {
    sign(key, "console csrf", &hex(&session.nonce))
}

/// Whether `presented` is the CSRF token of `session` (in constant time).
pub fn csrf_matches(key: &[u8; 32], session: &Session, presented: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), csrf_token(key, session).as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_session() -> impl Strategy<Value = Session> {
        (
            prop_oneof![Just(Access::Admin), Just(Access::Read)],
            "\\PC{1,20}",
            1u64..u64::MAX / 2,
            any::<[u8; 16]>(),
        )
            .prop_map(|(access, actor, expires, nonce)| Session {
                access,
                actor,
                expires,
                nonce,
            })
    }

    proptest! {
        #[test]
        fn a_sealed_session_opens_as_itself_until_it_expires(
            key in any::<[u8; 32]>(),
            session in any_session(),
        ) {
            let cookie = seal(&key, &session);
            prop_assert_eq!(open(&key, &cookie, session.expires - 1), Some(session.clone()));
            prop_assert_eq!(open(&key, &cookie, session.expires), None);
            prop_assert!(cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'),
                "a cookie value needs no quoting: {}", cookie);
        }

        #[test]
        fn a_changed_cookie_or_another_key_opens_nothing(
            key in any::<[u8; 32]>(),
            other in any::<[u8; 32]>(),
            session in any_session(),
            at in any::<prop::sample::Index>(),
            with in "[0-9a-z.]",
        ) {
            let cookie = seal(&key, &session);
            let mut bytes = cookie.clone().into_bytes();
            let at = at.index(bytes.len());
            let new = with.as_bytes()[0];
            prop_assume!(bytes[at] != new);
            bytes[at] = new;
            let changed = String::from_utf8(bytes).expect("ASCII");
            prop_assert_eq!(open(&key, &changed, 0), None);
            prop_assume!(key != other);
            prop_assert_eq!(open(&other, &cookie, 0), None);
        }

        #[test]
        fn a_csrf_token_belongs_to_its_session(
            key in any::<[u8; 32]>(),
            session in any_session(),
            other in any_session(),
        ) {
            let token = csrf_token(&key, &session);
            prop_assert!(csrf_matches(&key, &session, &token));
            prop_assert_eq!(csrf_matches(&key, &other, &token), other.nonce == session.nonce);
            prop_assert!(!csrf_matches(&key, &session, ""));
        }

        #[test]
        fn actor_names_are_short_printable_and_present(actor in "([ -~]|\\PC){0,80}") {
            let problem = actor_problem(&actor);
            let fine = !actor.trim().is_empty()
                && actor.len() <= MAX_ACTOR_BYTES
                && actor.chars().all(|c| c == ' ' || c.is_ascii_graphic());
            prop_assert_eq!(problem.is_none(), fine, "{:?}", actor);
        }
    }

    #[test]
    fn garbage_opens_nothing() {
        let key = [3; 32];
        for garbage in ["", ".", "admin", "admin.1.2.3.4", "root.9.00.00.ab"] {
            assert_eq!(open(&key, garbage, 0), None, "{garbage:?}");
        }
        assert!(actor_problem("ana\u{7}").is_some());
    }
}
