//! The console's session checks, as axum extractors: a handler names the
//! session it needs among its arguments and runs only for a request that
//! has one; any other request gets the extractor's refusal, so no handler
//! can forget a check.
//!
//! - [`SignedIn`]: the session cookie (else `401`); as an `Option`, no
//!   refusal at all.
//! - [`CsrfChecked`]: that, and the session's CSRF token in
//!   `X-CSRF-Token` (else `403`): every POST.
//! - [`AdminChange`]: that, from an admin session (else `403`): every
//!   change.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::session::{self, Access, Session};
use super::{COOKIE, CSRF_HEADER, now_secs};
use crate::http::{HttpSurface, error};

/// A request's session, from its cookie.
#[derive(Debug)]
pub struct SignedIn(pub Session);

/// The session of a POST: its cookie and its CSRF token.
#[derive(Debug)]
pub struct CsrfChecked(pub Session);

/// The session of a change only an admin session may make: its cookie,
/// its CSRF token, and the admin token's access.
#[derive(Debug)]
pub struct AdminChange(pub Session);

/// The session the cookie of a request holds, when it is one of ours and
/// not over.
fn cookie_session(surface: &HttpSurface, headers: &HeaderMap) -> Option<Session> {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)?;
    session::open(&surface.tokens.ticket_key(), cookie, now_secs())
}

/// Whether a request carries `session`'s CSRF token.
fn presents_csrf_token(surface: &HttpSurface, session: &Session, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    session::csrf_matches(&surface.tokens.ticket_key(), session, presented)
}

impl FromRequestParts<Arc<HttpSurface>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        surface: &Arc<HttpSurface>,
    ) -> Result<Self, Self::Rejection> {
        cookie_session(surface, &parts.headers)
            .map(SignedIn)
            .ok_or_else(|| {
                error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "sign in first (the session is missing, over or from another key)",
                )
            })
    }
}

/// `Option<SignedIn>`: the session when there is one, and no refusal
/// when there is none (for the page asking whether it is signed in).
impl OptionalFromRequestParts<Arc<HttpSurface>> for SignedIn {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        surface: &Arc<HttpSurface>,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(cookie_session(surface, &parts.headers).map(SignedIn))
    }
}

impl FromRequestParts<Arc<HttpSurface>> for CsrfChecked {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        surface: &Arc<HttpSurface>,
    ) -> Result<Self, Self::Rejection> {
        let SignedIn(session) =
            <SignedIn as FromRequestParts<_>>::from_request_parts(parts, surface).await?;
        if !presents_csrf_token(surface, &session, &parts.headers) {
            return Err(error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "a change needs the session's CSRF token in X-CSRF-Token",
            ));
        }
        Ok(CsrfChecked(session))
    }
}

impl FromRequestParts<Arc<HttpSurface>> for AdminChange {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        surface: &Arc<HttpSurface>,
    ) -> Result<Self, Self::Rejection> {
        let CsrfChecked(session) = CsrfChecked::from_request_parts(parts, surface).await?;
        if session.access != Access::Admin {
            return Err(error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "this session is read-only: sign in with the admin token to make changes",
            ));
        }
        Ok(AdminChange(session))
    }
}
