//! OFREP's change notifications (`eventStreams`, ADR-0008 of
//! `open-feature/protocol`): a bulk evaluation names an SSE stream, and
//! the stream says `refetchEvaluation` the moment a flag changes, so a web
//! page refetches instead of polling.
//!
//! A browser's `EventSource` sends no headers, so the stream cannot take
//! a token. The bulk evaluation, which did take one, hands out a ticket
//! in the stream's URL instead: short-lived (a ticket of window N opens
//! streams during windows N and N+1 of [`WINDOW`]) and worth nothing else
//! (it opens this stream only, which carries no flag data). A ticket is an
//! HMAC under a key every readyd with the same tokens derives alike
//! ([`crate::api::auth::TokenCheck::ticket_key`]), so replicas behind one
//! address accept each other's tickets and nothing is stored.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::api::flagd::FlagdCore;

/// The stream's path.
pub const PATH: &str = "/ofrep/v1/events";

/// How long one ticket window lasts.
pub const WINDOW: Duration = Duration::from_secs(600);

/// Seconds of a hidden page after which a provider closes the stream
/// (OFREP's `inactivityDelaySec`; the spec's default).
pub const INACTIVITY_DELAY_SECS: u64 = 120;

/// The ticket window `now` falls in.
pub fn window_at(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / WINDOW.as_secs())
}

/// The MAC of window `window` under `key`, in hex (128 bits of it).
fn mac(key: &[u8; 32], window: u64) -> String {
    crate::api::auth::mac_hex(key, &[format!("ofrep-events:{window}").as_bytes()], 16)
}

/// The ticket of window `window`: `<window>.<mac>`.
pub fn ticket(key: &[u8; 32], window: u64) -> String {
    format!("{window}.{}", mac(key, window))
}

/// Whether `ticket` opens a stream during window `now`: made under `key`
/// for this window or the one before.
pub fn admits(key: &[u8; 32], ticket: &str, now: u64) -> bool {
    let Some((window, presented)) = ticket.split_once('.') else {
        return false;
    };
    let Ok(window) = window.parse::<u64>() else {
        return false;
    };
    if window > now || now - window > 1 {
        return false;
    }
    let expected = mac(key, window);
    subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), expected.as_bytes()).into()
}

/// The `eventStreams` entry of a bulk answer: the stream on this server
/// (relative, so the provider joins it to the base URL it was given; no
/// `Host` header is trusted), with its ticket.
pub fn descriptor(ticket: &str) -> serde_json::Value {
    serde_json::json!([{
        "type": "sse",
        "endpoint": { "requestUri": format!("{PATH}?ticket={ticket}") },
        "inactivityDelaySec": INACTIVITY_DELAY_SECS,
    }])
}

/// The ticket of a stream request's query string, if it has one.
pub fn ticket_of(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name == "ticket")
        .map(|(_, value)| value.into_owned())
}

/// One `refetchEvaluation` message.
fn refetch() -> Event {
    let last_modified = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    Event::default().event("message").data(
        serde_json::json!({ "type": "refetchEvaluation", "lastModified": last_modified })
            .to_string(),
    )
}

/// The stream: `refetchEvaluation` at once and on every flag change, a
/// comment every 20 s so proxies keep it open, and its end when readyd
/// drains. Bounded by the same limit as the other event streams (`503`
/// past it).
///
/// The first message covers what changed while no stream was open: between
/// the bulk answer and the stream's first connect, and while a broken
/// stream reconnects (a browser's `EventSource` reconnects by itself, and
/// providers do not all refetch then). It costs one refetch per connect,
/// usually answered `304`.
pub fn stream(flagd: &FlagdCore) -> Result<Response, tonic::Status> {
    // Subscribed before provider_ready is sent, so nothing falls between.
    let events =
        flagd.events(|kind, _| matches!(kind, "provider_ready" | "configuration_change"))?;
    // keep_alive says nothing a refetch needs: the SSE keep-alive comment
    // does its job.
    let messages = events
        .take_while(|changed| std::future::ready(changed.is_ok()))
        .filter_map(|changed| std::future::ready(matches!(changed, Ok(true)).then(refetch)))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(messages)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(20)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_ticket_opens_streams_in_its_window_and_the_next_only(
            key in any::<[u8; 32]>(),
            other in any::<[u8; 32]>(),
            window in 1u64..1_000_000_000,
            later in 0u64..5,
        ) {
            let ticket = ticket(&key, window);
            prop_assert_eq!(admits(&key, &ticket, window + later), later <= 1);
            prop_assert!(!admits(&key, &ticket, window - 1), "not before it was made");
            prop_assert_eq!(admits(&other, &ticket, window), key == other);
        }

        #[test]
        fn a_changed_ticket_opens_nothing(
            key in any::<[u8; 32]>(),
            window in 0u64..1_000_000_000,
            at in 0usize..40,
            with in "[0-9a-f.x]",
        ) {
            let ticket = ticket(&key, window);
            let mut changed: Vec<char> = ticket.chars().collect();
            let at = at % changed.len();
            let new = with.chars().next().unwrap_or('x');
            prop_assume!(changed[at] != new);
            changed[at] = new;
            let changed: String = changed.into_iter().collect();
            prop_assert!(!admits(&key, &changed, window));
            prop_assert!(!admits(&key, &changed, window + 1));
        }
    }

    #[test]
    fn garbage_opens_nothing() {
        let key = [7; 32];
        for garbage in ["", ".", "1.", ".abc", "x.y", "18446744073709551616.00", "5"] {
            assert!(!admits(&key, garbage, 5), "{garbage:?}");
        }
    }

    #[test]
    fn the_ticket_travels_in_the_query_string() {
        let key = [1; 32];
        let ticket = ticket(&key, 42);
        let streams = descriptor(&ticket);
        let uri = streams[0]["endpoint"]["requestUri"]
            .as_str()
            .expect("a request URI");
        let (path, query) = uri.split_once('?').expect("a query");
        assert_eq!(path, PATH);
        assert_eq!(ticket_of(Some(query)).as_deref(), Some(ticket.as_str()));
        assert_eq!(ticket_of(None), None);
        assert_eq!(streams[0]["type"], "sse");
    }
}
