//! Keeping secrets out of what people see: URLs lose every credential they
//! can carry, and error messages lose any secret a driver may have echoed.
//! Pure: no I/O.
//!
//! What counts as a credential in a URL:
//! - the password (`redis://:pw@host`, `amqp://user:pw@host`);
//! - the user part, unless it is certainly a name: a lone user part is how
//!   tokens are written for NATS (`nats://TOKEN@host`), HTTP
//!   (`https://TOKEN@host`) and older Redis clients (`redis://PW@host`), and
//!   HTTP's basic-auth user may itself be the token
//!   (`https://TOKEN:x-oauth-basic@host`). It is kept only for PostgreSQL
//!   (always a role name) and for other schemes when a password follows it;
//! - the value of every query parameter whose name looks like a secret
//!   (contains `pass`, `pwd`, `secret`, `token`, `key`, `auth`, `credential`,
//!   `sig`, `cookie`, `session` or `private`, in any case: `password`,
//!   `sslkey`, `api_key`, `X-Amz-Signature`, `auth_token`, …);
//! - the fragment, which a check never sends and which OAuth-style URLs use
//!   for tokens.
//!
//! When in doubt, a part is hidden: a name shown as `***` costs a look at
//! the configuration; a secret shown costs a rotation.

use url::Url;

/// What replaces a removed secret.
pub const MASK: &str = "***";

/// Parts of query parameter names that mark their values as secrets
/// (compared without case). Broad on purpose: hiding a harmless value costs
/// nothing.
const SECRET_PARAM_PARTS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "credential",
    "sig",
    "cookie",
    "session",
    "private",
];

/// Whether the value of query parameter `name` is a secret.
pub fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAM_PARTS.iter().any(|part| name.contains(part))
}

/// Schemes whose user part is always a name, never a credential.
const USER_IS_A_NAME: &[&str] = &["postgres", "postgresql"];

/// Schemes whose user part may be a credential even with a password after
/// it (HTTP basic auth with a token as the user).
const USER_MAY_BE_A_TOKEN: &[&str] = &["http", "https"];

/// Whether the user part of `url` is (or may be) a credential.
fn user_is_secret(url: &Url) -> bool {
    if url.username().is_empty() {
        return false;
    }
    let scheme = url.scheme();
    if USER_IS_A_NAME.contains(&scheme) {
        return false;
    }
    url.password().is_none() || USER_MAY_BE_A_TOKEN.contains(&scheme)
}

/// `raw` with every credential it carries (see the module doc) replaced by
/// `***`. Text that is not a URL is not shown at all (it might be one with a
/// typo, password included).
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = Url::parse(raw) else {
        return "<not a URL>".to_owned();
    };
    // Both setters fail only for URLs that cannot have credentials (no
    // host), and such a URL has none to hide.
    if user_is_secret(&url) {
        let _ = url.set_username(MASK);
    }
    if url.password().is_some() {
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
    if url.fragment().is_some_and(|fragment| !fragment.is_empty()) {
        url.set_fragment(Some(MASK));
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
    /// A redactor for the secrets of `url`: every part [`redact_url`] hides.
    pub fn for_url(url: &Url) -> Self {
        let mut secrets = Vec::new();
        let mut push_encoded = |raw: &str| {
            secrets.push(raw.to_owned());
            if let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8() {
                secrets.push(decoded.into_owned());
            }
        };
        if user_is_secret(url) {
            push_encoded(url.username());
        }
        if let Some(password) = url.password() {
            push_encoded(password);
        }
        if let Some(fragment) = url.fragment() {
            push_encoded(fragment);
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

    /// A secret: upper case letters and at least one digit, which nothing
    /// else in the generated URLs has (names, hosts, paths and plain values
    /// are lower case letters only), so "not in the output" is a real test.
    fn secret() -> impl Strategy<Value = String> {
        "[A-Z]{2,6}[0-9][A-Z0-9]{3,8}"
    }

    /// Every scheme a check URL can have.
    fn any_scheme() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "postgres",
            "postgresql",
            "redis",
            "rediss",
            "amqp",
            "amqps",
            "nats",
            "tls",
            "http",
            "https",
            "grpc",
            "tcp",
        ])
    }

    /// How the user part is written.
    #[derive(Clone, Debug)]
    enum UserInfo {
        /// No user part.
        None,
        /// `user@`: a name for PostgreSQL, else a token.
        User,
        /// `:password@`.
        Password,
        /// `user:password@`.
        UserPassword,
    }

    /// A secret parameter name: a secret-looking part, in any case, with
    /// letters or `_`/`-` around it (`sslkey`, `X-Api-Key`, `auth_token`).
    fn secret_param_name() -> impl Strategy<Value = String> {
        (
            "[a-z_-]{0,4}",
            prop::sample::select(SECRET_PARAM_PARTS),
            "[a-z_-]{0,4}",
            any::<u32>(),
        )
            .prop_map(|(before, part, after, case)| {
                format!("{before}{part}{after}")
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if case >> (i % 32) & 1 == 1 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            })
    }

    /// A plain parameter: a lower-case name that is no secret's, and a
    /// lower-case value.
    fn plain_param() -> impl Strategy<Value = (String, String)> {
        ("[a-z]{1,8}", "[a-z]{0,8}").prop_filter("a plain name", |(name, _)| {
            !is_secret_param(name)
                && !matches!(
                    name.as_str(),
                    "critical" | "interval" | "timeout" | "failures" | "min_free"
                )
        })
    }

    /// One generated check URL and what it holds.
    #[derive(Clone, Debug)]
    struct Case {
        raw: String,
        secrets: Vec<String>,
        names: Vec<String>,
        host: String,
        path: String,
        plain: Vec<(String, String)>,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            any_scheme(),
            prop_oneof![
                Just(UserInfo::None),
                Just(UserInfo::User),
                Just(UserInfo::Password),
                Just(UserInfo::UserPassword),
            ],
            "[a-z]{1,8}",
            secret(),
            secret(),
            "[a-z]{1,10}(\\.[a-z]{2,5})?",
            1u16..,
            "(/[a-z]{1,8}){0,2}",
            prop::collection::vec((secret_param_name(), secret()), 0..3),
            prop::collection::vec(plain_param(), 0..3),
            prop::option::of(secret()),
            any::<u64>(),
        )
            .prop_map(
                |(
                    scheme,
                    userinfo,
                    name,
                    user_secret,
                    password,
                    host,
                    port,
                    path,
                    secret_params,
                    plain,
                    fragment,
                    order,
                )| {
                    let mut secrets = Vec::new();
                    let mut names = Vec::new();
                    let userinfo = match userinfo {
                        UserInfo::None => String::new(),
                        UserInfo::User if scheme.starts_with("postgres") => {
                            names.push(name.clone());
                            format!("{name}@")
                        }
                        UserInfo::User => {
                            secrets.push(user_secret.clone());
                            format!("{user_secret}@")
                        }
                        UserInfo::Password => {
                            secrets.push(password.clone());
                            format!(":{password}@")
                        }
                        UserInfo::UserPassword => {
                            secrets.push(password.clone());
                            if !scheme.starts_with("http") {
                                names.push(name.clone());
                            }
                            format!("{name}:{password}@")
                        }
                    };
                    // Secret and plain parameters interleaved.
                    let mut pairs: Vec<(String, String)> = Vec::new();
                    for (i, (key, value)) in secret_params.into_iter().enumerate() {
                        secrets.push(value.clone());
                        pairs.push((key, value));
                        if order >> i & 1 == 1 {
                            pairs.rotate_left(1);
                        }
                    }
                    pairs.extend(plain.iter().cloned());
                    if order >> 8 & 1 == 1 {
                        pairs.reverse();
                    }
                    let query = pairs
                        .iter()
                        .map(|(key, value)| format!("{key}={value}"))
                        .collect::<Vec<_>>()
                        .join("&");
                    let mut raw = format!("{scheme}://{userinfo}{host}:{port}{path}");
                    if !query.is_empty() {
                        raw.push('?');
                        raw.push_str(&query);
                    }
                    if let Some(fragment) = fragment {
                        raw.push('#');
                        raw.push_str(&fragment);
                        secrets.push(fragment);
                    }
                    Case {
                        raw,
                        secrets,
                        names,
                        host,
                        path,
                        plain,
                    }
                },
            )
    }

    /// `text` percent-decoded, so an encoded secret is found too.
    fn decoded(text: &str) -> String {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// No generated secret survives, in any spelling; every part that
        /// is not a secret does.
        #[test]
        fn urls_lose_every_credential_and_keep_everything_else(case in case()) {
            let redacted = redact_url(&case.raw);
            let readable = decoded(&redacted);
            for secret in &case.secrets {
                prop_assert!(!readable.contains(secret.as_str()), "{} -> {redacted}", case.raw);
            }
            let url = Url::parse(&redacted)
                .map_err(|err| TestCaseError::fail(format!("{redacted}: {err}")))?;
            prop_assert_eq!(url.host_str(), Some(case.host.as_str()), "{}", redacted);
            prop_assert!(url.path().starts_with(&case.path), "{}", redacted);
            let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            for pair in &case.plain {
                prop_assert!(pairs.contains(pair), "{pair:?} kept in {redacted}");
            }
            for name in &case.names {
                prop_assert_eq!(url.username(), name.as_str(), "{}", redacted);
            }
            // Which secrets they were cannot be told from the output.
            let mut twin = case.raw.clone();
            for secret in &case.secrets {
                twin = twin.replace(secret.as_str(), &format!("{secret}9Q"));
            }
            prop_assert_eq!(redact_url(&twin), redacted);
        }

        /// Whatever a driver echoes of a URL's secrets is scrubbed from its
        /// messages, raw or percent-encoded.
        #[test]
        fn messages_lose_every_secret_of_the_url(
            case in case(),
            prefix in "[a-z ]{0,20}",
            suffix in "[a-z ]{0,20}",
        ) {
            let url = Url::parse(&case.raw).map_err(|err| TestCaseError::fail(err.to_string()))?;
            let redactor = Redactor::for_url(&url);
            let message = format!("{prefix}{}{suffix} {}", case.secrets.join(" "), url.as_str());
            let scrubbed = redactor.scrub(&message);
            for secret in &case.secrets {
                prop_assert!(!decoded(&scrubbed).contains(secret.as_str()), "{scrubbed}");
            }
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
    fn the_user_part_is_hidden_when_it_is_the_secret() {
        let cases = [
            ("nats://TOKEN1@bus:4222", "nats://***@bus:4222"),
            (
                "https://ghp_T0KEN@example.org/x",
                "https://***@example.org/x",
            ),
            (
                "https://T0KEN:x-oauth-basic@example.org/",
                "https://***:***@example.org/",
            ),
            ("redis://:pw1@cache:6379", "redis://:***@cache:6379"),
            ("redis://PW1@cache:6379", "redis://***@cache:6379"),
            (
                "amqp://guest:guest@mq:5672/%2f",
                "amqp://guest:***@mq:5672/%2f",
            ),
            ("postgres://app@db/orders", "postgres://app@db/orders"),
            (
                "postgres://app@db/orders?sslkey=/k.pem&sslmode=require",
                "postgres://app@db/orders?sslkey=***&sslmode=require",
            ),
            (
                "https://h/x?X-Amz-Signature=abc&X-Amz-Credential=def&X-Amz-Date=1",
                "https://h/x?X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=1",
            ),
            ("https://h/cb#access_token=abc", "https://h/cb#***"),
            (
                "grpc://T0KEN@api:50051/readiness",
                "grpc://***@api:50051/readiness",
            ),
        ];
        for (raw, shown) in cases {
            assert_eq!(redact_url(raw), shown, "{raw}");
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
