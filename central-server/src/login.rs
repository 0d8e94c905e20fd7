//! Operator login under attack: every attempt is counted *before* its password is checked,
//! and password hashing runs under one global bound.
//!
//! - **Per username** (known operators): one `UPDATE … RETURNING` on the operator's row both
//!   counts the attempt and reads the count, so a hundred simultaneous wrong passwords get
//!   exactly `login_max_failures` evaluations; a success clears the count.
//! - **Made-up usernames** are counted the same way in memory ([`Throttle`]), so they write
//!   no row and answer exactly like a known user with a wrong password.
//! - **Per source address**, in memory: a flood from one address is refused before any hash.
//! - **Hashing**: on [`Settings::hash_workers`](crate::config::Settings::hash_workers)
//!   threads of their own (argon2id holds about 19 MiB each), with a bounded queue in front;
//!   a login is admitted to the queue before the database is asked anything, and a full
//!   queue is 429 with `Retry-After`. Memory stays within workers × 19 MiB whatever arrives,
//!   and scans (which never hash) keep at least one core and their database connections.

use crate::auth::{verify_password, AuthenticatedOperator};
use crate::error::AppError;
use crate::AppState;
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use stile_shared::Identifier;

/// Waiting hashes allowed per hashing worker before logins are refused with 429.
pub const QUEUE_PER_WORKER: usize = 8;
/// Most keys one in-memory throttle holds (addresses, made-up usernames).
pub const THROTTLE_CAPACITY: usize = 65_536;

/// Attempts counted per key within a window, in memory.
#[derive(Debug)]
pub struct Throttle<K> {
    max: i64,
    window: Duration,
    capacity: usize,
    counts: HashMap<K, (DateTime<Utc>, i64)>,
}

/// A key that is over its limit (or a full throttle that cannot take a new key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled;

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub fn new(max: i64, window: Duration, capacity: usize) -> Throttle<K> {
        Throttle {
            max,
            window,
            capacity,
            counts: HashMap::new(),
        }
    }

    /// Counts one attempt for `key` at `now`; refused when it is over the limit.
    pub fn charge(&mut self, key: &K, now: DateTime<Utc>) -> Result<i64, Throttled> {
        if !self.counts.contains_key(key) && self.counts.len() >= self.capacity {
            let window = self.window;
            self.counts.retain(|_, (since, _)| *since > now - window);
            if self.counts.len() >= self.capacity {
                return Err(Throttled);
            }
        }
        let entry = self.counts.entry(key.clone()).or_insert((now, 0));
        if entry.0 <= now - self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > self.max {
            Err(Throttled)
        } else {
            Ok(entry.1)
        }
    }

    /// Takes back one attempt (it succeeded).
    pub fn refund(&mut self, key: &K) {
        if let Some(entry) = self.counts.get_mut(key) {
            entry.1 = (entry.1 - 1).max(0);
        }
    }
}

/// The login guard every server process holds.
#[derive(Debug)]
pub struct LoginGuard {
    hashers: Hashers,
    /// Logins admitted and not finished (checking their password, or waiting to).
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    addresses: Mutex<Throttle<IpAddr>>,
    unknown: Mutex<Throttle<String>>,
}

/// A fixed set of threads that check passwords, one at a time each: argon2id's 19 MiB
/// live in these threads' memory only, so a flood cannot grow the process (the blocking
/// pool would spread hashes over up to 512 threads, each keeping its own allocator arena).
#[derive(Debug)]
struct Hashers {
    jobs: Mutex<std::sync::mpsc::Sender<HashJob>>,
}

type HashJob = (String, String, tokio::sync::oneshot::Sender<bool>);

impl Hashers {
    fn start(workers: usize) -> Hashers {
        let (jobs, queue) = std::sync::mpsc::channel::<HashJob>();
        let queue = Arc::new(Mutex::new(queue));
        for worker in 0..workers {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{worker}"))
                .spawn(move || loop {
                    let job = {
                        let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                        queue.recv()
                    };
                    let Ok((hash, password, answer)) = job else {
                        return;
                    };
                    let _ = answer.send(verify_password(&hash, &password));
                });
            if let Err(error) = spawned {
                tracing::error!(error = %error, "cannot start a password-check thread");
            }
        }
        Hashers {
            jobs: Mutex::new(jobs),
        }
    }

    async fn check(&self, hash: String, password: String) -> Result<bool, AppError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        {
            let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.send((hash, password, answer))
                .map_err(|_| AppError::Internal("password-check threads are gone".into()))?;
        }
        answered
            .await
            .map_err(|_| AppError::Internal("a password-check thread stopped".into()))
    }
}

/// A login's place among the admitted; given back when dropped.
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LoginGuard {
    pub fn new(settings: &crate::config::Settings) -> LoginGuard {
        let workers = settings.hash_workers();
        let window = Duration::seconds(settings.login_window_secs);
        LoginGuard {
            hashers: Hashers::start(workers),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: workers * (1 + QUEUE_PER_WORKER),
            addresses: Mutex::new(Throttle::new(
                settings.login_max_failures_per_address,
                window,
                THROTTLE_CAPACITY,
            )),
            unknown: Mutex::new(Throttle::new(
                settings.login_max_failures,
                window,
                THROTTLE_CAPACITY,
            )),
        }
    }

    /// A place for one more login (checking or waiting), or `None` when the queue is full:
    /// taken before the database is asked anything, so a flood costs no query.
    fn admit(&self) -> Option<Admission> {
        let before = self.admitted.fetch_add(1, Ordering::SeqCst);
        let admission = Admission(self.admitted.clone());
        (before < self.capacity).then_some(admission)
    }

    fn charge_address(&self, address: IpAddr, now: DateTime<Utc>) -> Result<(), Throttled> {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        addresses.charge(&address, now).map(|_| ())
    }

    fn refund_address(&self, address: IpAddr) {
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        addresses.refund(&address);
    }

    fn charge_unknown(&self, username: &str, now: DateTime<Utc>) -> Result<(), Throttled> {
        let mut unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        unknown.charge(&username.to_owned(), now).map(|_| ())
    }
}

type ChargedOperator = (i64, String, i64, String, i32, i64, bool);

/// Logs an operator in, or says why not: 401 for an unknown user or a wrong password (the
/// same answer, after the same work), 429 when the username, the address or the hashing
/// queue is over its limit.
pub async fn log_in(
    state: &AppState,
    address: IpAddr,
    username: &Identifier,
    password: &str,
    now: DateTime<Utc>,
) -> Result<AuthenticatedOperator, AppError> {
    let guard = &state.login;
    let window = state.settings.login_window_secs;
    let throttled = AppError::TooManyRequests {
        retry_after_secs: u64::try_from(window).unwrap_or(300),
    };
    if guard.charge_address(address, now).is_err() {
        tracing::warn!(%address, "login throttled: too many failures from this address");
        state.metrics.record_login_failure();
        return Err(throttled);
    }
    let Some(_admission) = guard.admit() else {
        state.metrics.record_login_failure();
        return Err(AppError::TooManyRequests {
            retry_after_secs: 1,
        });
    };
    let since = now - Duration::seconds(window);
    let charged: Option<ChargedOperator> = sqlx::query_as(
        "UPDATE operators o SET \
           failed_logins = CASE WHEN o.failed_logins_since > $2 THEN o.failed_logins + 1 ELSE 1 END, \
           failed_logins_since = CASE WHEN o.failed_logins_since > $2 THEN o.failed_logins_since ELSE $3 END \
         FROM merchants m WHERE m.id = o.merchant_id AND o.username = $1 \
         RETURNING o.id, o.password_hash, m.id, m.code, o.failed_logins, o.token_generation, \
                   o.disabled_at IS NOT NULL",
    )
    .bind(username.as_str())
    .bind(since)
    .bind(now)
    .fetch_optional(&state.pool)
    .await?;
    let over_limit = match &charged {
        Some((_, _, _, _, attempts, _, _)) => {
            i64::from(*attempts) > state.settings.login_max_failures
        }
        None => guard.charge_unknown(username.as_str(), now).is_err(),
    };
    if over_limit {
        tracing::warn!(username = %username, "login throttled: too many failures for this username");
        state.metrics.record_login_failure();
        return Err(throttled);
    }
    // An unknown user is checked against a dummy hash, so both failures take as long.
    let stored_hash = charged
        .as_ref()
        .map(|(_, hash, _, _, _, _, _)| hash.clone())
        .unwrap_or_else(|| state.dummy_hash.to_string());
    let password_ok = guard
        .hashers
        .check(stored_hash, password.to_owned())
        .await?;
    match charged {
        // A disabled operator's right password is refused like a wrong one.
        Some((id, _, merchant_id, merchant_code, _, generation, false)) if password_ok => {
            sqlx::query("UPDATE operators SET failed_logins = 0 WHERE id = $1")
                .bind(id)
                .execute(&state.pool)
                .await?;
            guard.refund_address(address);
            Ok(AuthenticatedOperator {
                id,
                username: username.as_str().to_owned(),
                merchant_id,
                merchant_code,
                generation,
            })
        }
        _ => {
            state.metrics.record_login_failure();
            tracing::info!(username = %username, %address, "login failed");
            Err(AppError::InvalidCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_counts_within_its_window_and_refuses_over_the_limit() {
        let now = Utc::now();
        let mut throttle = Throttle::new(2, Duration::seconds(60), 10);
        assert_eq!(throttle.charge(&"a", now), Ok(1));
        assert_eq!(throttle.charge(&"a", now), Ok(2));
        assert_eq!(throttle.charge(&"a", now), Err(Throttled));
        assert_eq!(throttle.charge(&"b", now), Ok(1), "keys are separate");
        throttle.refund(&"b");
        assert_eq!(throttle.charge(&"b", now), Ok(1), "a refund takes one back");
        // A new window starts over.
        assert_eq!(throttle.charge(&"a", now + Duration::seconds(61)), Ok(1));
    }

    #[test]
    fn a_full_throttle_makes_room_from_expired_keys_or_refuses_new_ones() {
        let now = Utc::now();
        let mut throttle = Throttle::new(5, Duration::seconds(60), 2);
        assert!(throttle.charge(&1, now).is_ok());
        assert!(throttle.charge(&2, now).is_ok());
        assert_eq!(
            throttle.charge(&3, now),
            Err(Throttled),
            "full: new keys wait"
        );
        assert!(throttle.charge(&1, now).is_ok(), "known keys still count");
        assert_eq!(throttle.charge(&3, now + Duration::seconds(61)), Ok(1));
        assert!(throttle.counts.len() <= 2);
    }
}
