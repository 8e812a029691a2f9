//! Keeping secrets out of what people see: URLs lose their password and
//! secret query parameters, and error messages lose any secret a driver may
//! have echoed. Pure: no I/O.

use url::Url;

/// What replaces a removed secret.
pub const MASK: &str = "***";

/// Query parameters whose values are secrets (compared without case).
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "secret",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "auth",
    "authorization",
    "sslpassword",
];

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS
        .iter()
        .any(|secret| secret.eq_ignore_ascii_case(name))
}

/// `raw` with its password and secret query parameter values replaced by
/// `***`. Text that is not a URL is not shown at all (it might be one with a
/// typo, password included).
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = Url::parse(raw) else {
        return "<not a URL>".to_owned();
    };
    if url.password().is_some() {
        // Cannot fail: a URL with a password has a host.
        let _ = url.set_password(Some(MASK));
    }
    let has_secret_param = url.query_pairs().any(|(key, _)| is_secret_param(&key));
    if has_secret_param {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_secret_param(&key) {
                    MASK.to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Removes one check's secrets from messages about it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// Every spelling of every secret (raw and percent-decoded), longest
    /// first so a secret containing another is removed whole.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// A redactor for the secrets of `url`: its password and the values of
    /// its secret query parameters.
    pub fn for_url(url: &Url) -> Self {
        let mut secrets = Vec::new();
        if let Some(password) = url.password() {
            secrets.push(password.to_owned());
            if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
                secrets.push(decoded.into_owned());
            }
        }
        for (key, value) in url.query_pairs() {
            if is_secret_param(&key) {
                secrets.push(value.into_owned());
            }
        }
        if let Some(query) = url.query() {
            for pair in query.split('&') {
                if let Some((key, value)) = pair.split_once('=')
                    && is_secret_param(key)
                {
                    secrets.push(value.to_owned());
                }
            }
        }
        secrets.retain(|secret| !secret.is_empty());
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `message` with every occurrence of a secret replaced by `***`.
    pub fn scrub(&self, message: &str) -> String {
        let mut scrubbed = message.to_owned();
        for secret in &self.secrets {
            if scrubbed.contains(secret.as_str()) {
                scrubbed = scrubbed.replace(secret.as_str(), MASK);
            }
        }
        scrubbed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Passwords drawn from characters that never appear in the rest of
    /// the generated URLs (upper case and symbols), so "not in the output"
    /// is a real test.
    fn password() -> impl Strategy<Value = String> {
        "[A-Z!$*+;~]{4,16}"
    }

    fn scheme() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("postgres"),
            Just("redis"),
            Just("amqp"),
            Just("nats"),
            Just("http"),
            Just("https"),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn urls_lose_their_password_and_secret_parameters(
            scheme in scheme(),
            user in "[a-z]{1,8}",
            host in "[a-z]{1,10}(\\.[a-z]{2,5})?",
            port in 1u16..,
            path in "(/[a-z0-9]{1,8}){0,2}",
            secret in password(),
            secret_param in prop::sample::select(SECRET_PARAMS),
            other in "[a-z]{1,6}",
        ) {
            let raw = format!(
                "{scheme}://{user}:{secret}@{host}:{port}{path}?{secret_param}={secret}&keep={other}"
            );
            let redacted = redact_url(&raw);
            prop_assert!(!redacted.contains(&secret), "{redacted}");
            prop_assert!(redacted.contains(&format!("{user}:{MASK}@")), "{redacted}");
            prop_assert!(redacted.contains(&host), "{redacted}");
            let keep = format!("keep={other}");
            prop_assert!(redacted.contains(&keep), "{redacted}");
            // Which password it was cannot be told from the output.
            let other_secret = format!("{secret}Z");
            let twin = raw.replace(&secret, &other_secret);
            prop_assert_eq!(redact_url(&twin), redacted);
        }

        #[test]
        fn messages_lose_every_spelling_of_the_secret(
            secret in password(),
            prefix in "[a-z ]{0,20}",
            suffix in "[a-z ]{0,20}",
        ) {
            let url = Url::parse(&format!("redis://user:{secret}@host:6379/?token={secret}2"))
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
            let redactor = Redactor::for_url(&url);
            let encoded = url.password().unwrap_or_default().to_owned();
            for shown in [secret.clone(), encoded, format!("{secret}2")] {
                let message = format!("{prefix}{shown}{suffix}");
                let scrubbed = redactor.scrub(&message);
                prop_assert!(!scrubbed.contains(&secret), "{scrubbed}");
                prop_assert!(scrubbed.contains(MASK), "{scrubbed}");
            }
            // Messages without secrets pass unchanged.
            let clean = format!("{prefix}{suffix}");
            prop_assert_eq!(redactor.scrub(&clean), clean);
        }
    }

    #[test]
    fn text_that_is_not_a_url_is_not_shown() {
        assert_eq!(redact_url("redis//user:pw@host"), "<not a URL>");
    }

    #[test]
    fn a_url_without_secrets_is_unchanged() {
        assert_eq!(
            redact_url("http://127.0.0.1:8080/healthz?x=1"),
            "http://127.0.0.1:8080/healthz?x=1"
        );
    }
}
