//! Who may change the gate through its local listener. Reading (the status page, the gate
//! display, `/api/status`, `/metrics`) stays open; every state-changing request needs a
//! credential:
//! - `POST /api/scan` (scan engines on another process, tests): `Authorization: Bearer
//!   <api_token>` from the settings; without a configured token the endpoint is closed.
//! - The gate page's forms: logging in needs only the CSRF double-submit (a random value in
//!   a `SameSite=Strict` cookie and the same value in the form); logging out and switching
//!   the function also need the browser session cookie that a login on the page set.
//!
//! Secrets are compared in constant time; sessions live in memory, at most
//! [`MAX_SESSIONS`], for at most [`SESSION_TTL`].

use axum::http::HeaderMap;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The gate page's browser session cookie.
pub const SESSION_COOKIE: &str = "stile_gate";
/// The CSRF double-submit cookie (and form field `csrf`).
pub const CSRF_COOKIE: &str = "stile_csrf";
/// Browser sessions kept at once (the oldest goes first).
pub const MAX_SESSIONS: usize = 16;
/// A browser session's lifetime (one shift).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// A fresh random value for a cookie or a form.
pub fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal without telling, by its timing, how much of it matched.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value of a cookie only this origin's pages send back.
pub fn set_cookie(name: &str, value: &str) -> String {
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict")
}

/// Whether the request carries `Authorization: Bearer <expected>`.
pub fn bearer_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| same_secret(token.trim(), expected))
}

/// Whether the form's `csrf` field matches the CSRF cookie (double submit).
pub fn csrf_ok(headers: &HeaderMap, form_value: &str) -> bool {
    cookie(headers, CSRF_COOKIE)
        .is_some_and(|value| !value.is_empty() && same_secret(value, form_value))
}

/// The browser sessions of the gate page.
#[derive(Debug, Default)]
pub struct BrowserSessions {
    sessions: Mutex<HashMap<String, Instant>>,
}

impl BrowserSessions {
    /// A new session after a login on the page; its id goes into [`SESSION_COOKIE`].
    pub fn open(&self) -> String {
        let id = random_token();
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|_, at| at.elapsed() < SESSION_TTL);
            while sessions.len() >= MAX_SESSIONS {
                let oldest = sessions
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(id, _)| id.clone());
                match oldest {
                    Some(oldest) => sessions.remove(&oldest),
                    None => break,
                };
            }
            sessions.insert(id.clone(), Instant::now());
        }
        id
    }

    /// Whether the request's session cookie names a live session.
    pub fn is_valid(&self, headers: &HeaderMap) -> bool {
        let Some(id) = cookie(headers, SESSION_COOKIE) else {
            return false;
        };
        self.sessions.lock().is_ok_and(|sessions| {
            sessions
                .iter()
                .any(|(known, at)| same_secret(known, id) && at.elapsed() < SESSION_TTL)
        })
    }

    /// Ends every session (the operator logged out).
    pub fn close_all(&self) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

    #[test]
    fn credentials_are_checked_exactly() {
        let with_token = headers(&[("authorization", "Bearer s3cret-token")]);
        assert!(bearer_is(&with_token, "s3cret-token"));
        assert!(!bearer_is(&with_token, "s3cret-tokeN"));
        assert!(!bearer_is(&headers(&[]), "s3cret-token"));
        let cookies = headers(&[("cookie", "a=1; stile_csrf=abc; stile_gate=xyz")]);
        assert_eq!(cookie(&cookies, CSRF_COOKIE), Some("abc"));
        assert!(csrf_ok(&cookies, "abc"));
        assert!(!csrf_ok(&cookies, "abd"));
        assert!(!csrf_ok(&headers(&[]), ""));
        let sessions = BrowserSessions::default();
        let id = sessions.open();
        let cookie_header = format!("{SESSION_COOKIE}={id}");
        assert!(sessions.is_valid(&headers(&[("cookie", &cookie_header)])));
        assert!(!sessions.is_valid(&cookies));
        sessions.close_all();
        assert!(!sessions.is_valid(&headers(&[("cookie", &cookie_header)])));
    }
}
