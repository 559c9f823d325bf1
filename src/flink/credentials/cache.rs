//! Temporary credentials held for every request: fetched once, refreshed ahead of expiry by one
//! caller while the others keep signing with the current ones, and kept through a failed refresh
//! until they really expire.
//!
//! Two locks: a `std::sync::RwLock` holding the current credentials (read on every request,
//! never held across an await) and a `tokio::sync::Mutex` that whoever refreshes holds for the
//! whole fetch, so there is at most one fetch in flight (no stampede). Callers whose credentials
//! are still valid never wait for that mutex.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::remote::{self, Clients, Fetched};
use super::{CredentialError, RemoteSource};
use crate::clock::Clock;
use crate::flink::Credentials;

/// How far ahead of expiry credentials are refreshed: 15 minutes (the official SDK's margin), or
/// a quarter of their lifetime when that is shorter.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(15 * 60);

/// After a failed fetch, the next one waits this long (requests meanwhile use the current
/// credentials, or fail at once when there are none), so an STS outage is not hammered.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Refreshing credentials from one of `sources`: the first that answers is used from then on.
pub(super) struct Cache {
    sources: Vec<RemoteSource>,
    clients: Clients,
    clock: Arc<dyn Clock>,
    current: RwLock<Option<Held>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Index of the source in use once one answered; [`NONE_PINNED`] before.
    pinned: AtomicUsize,
}

const NONE_PINNED: usize = usize::MAX;

#[derive(Clone)]
struct Held {
    credentials: Arc<Credentials>,
    expires_at: DateTime<Utc>,
    refresh_at: DateTime<Utc>,
}

#[derive(Default)]
struct RefreshState {
    /// No fetch before this, after a failure.
    retry_at: Option<DateTime<Utc>>,
    /// Why the last fetch failed.
    last_error: Option<String>,
}

impl Cache {
    pub(super) fn new(sources: Vec<RemoteSource>, clients: Clients, clock: Arc<dyn Clock>) -> Cache {
        Cache {
            sources,
            clients,
            clock,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            pinned: AtomicUsize::new(NONE_PINNED),
        }
    }

    /// The name of the source in use, or of every candidate before one answered.
    pub(super) fn name(&self) -> String {
        match self.sources.get(self.pinned.load(Ordering::Acquire)) {
            Some(source) => source.name(),
            None => self.sources.iter().map(RemoteSource::name).collect::<Vec<_>>().join(", else "),
        }
    }

    /// Credentials valid now: the current ones, or fresh ones when they are due.
    pub(super) async fn get(&self) -> Result<Arc<Credentials>, CredentialError> {
        let now = self.clock.now();
        if let Some(held) = self.held() {
            if now < held.refresh_at {
                return Ok(held.credentials);
            }
            if now < held.expires_at {
                // Due but still valid: one caller refreshes, the others sign with these meanwhile.
                return match self.refresh.try_lock() {
                    Ok(mut state) => Ok(self.refresh_locked(&mut state, None).await.unwrap_or(held.credentials)),
                    Err(_) => Ok(held.credentials),
                };
            }
        }
        let mut state = self.refresh.lock().await;
        // Whoever held the lock before us may have refreshed already.
        if let Some(held) = self.held().filter(|held| self.clock.now() < held.refresh_at) {
            return Ok(held.credentials);
        }
        match self.refresh_locked(&mut state, None).await {
            Some(credentials) => Ok(credentials),
            None => match self.held() {
                Some(held) if self.clock.now() < held.expires_at => Ok(held.credentials),
                Some(held) => Err(CredentialError::Unavailable(format!(
                    "the credentials expired at {} and could not be refreshed: {}",
                    crate::clock::format_instant(held.expires_at),
                    state.last_error.as_deref().unwrap_or("no refresh was allowed yet")
                ))),
                None => Err(CredentialError::Unavailable(
                    state.last_error.clone().unwrap_or_else(|| "no credentials fetched yet".to_owned()),
                )),
            },
        }
    }

    /// The API refused `rejected` (`InvalidSecurityToken.*`): fetch new ones unless someone
    /// already did. Returns the credentials to retry with.
    pub(super) async fn refresh_after_rejection(
        &self,
        rejected: &Arc<Credentials>,
    ) -> Result<Arc<Credentials>, CredentialError> {
        let mut state = self.refresh.lock().await;
        if let Some(held) = self.held().filter(|held| !Arc::ptr_eq(&held.credentials, rejected)) {
            return Ok(held.credentials);
        }
        self.refresh_locked(&mut state, Some(rejected)).await.ok_or_else(|| {
            CredentialError::Unavailable(state.last_error.clone().unwrap_or_else(|| "refresh failed".to_owned()))
        })
    }

    fn held(&self) -> Option<Held> {
        self.current.read().expect("the credentials lock is never poisoned: nothing panics holding it").clone()
    }

    /// Fetches with the refresh mutex held. `None` when the fetch failed or is not allowed yet
    /// (after a recent failure); the current credentials, if any, stay in place.
    async fn refresh_locked(
        &self,
        state: &mut RefreshState,
        rejected: Option<&Arc<Credentials>>,
    ) -> Option<Arc<Credentials>> {
        let started = self.clock.now();
        if state.retry_at.is_some_and(|retry_at| started < retry_at) {
            return None;
        }
        let candidates: Vec<usize> = match self.pinned.load(Ordering::Acquire) {
            NONE_PINNED => (0..self.sources.len()).collect(),
            index => vec![index],
        };
        let mut errors = Vec::new();
        for index in candidates {
            let source = &self.sources[index];
            match self.fetch(source, started).await {
                Ok(fetched) => {
                    let held = held_from(fetched, started);
                    info!(
                        credentials = %source.name(),
                        access_key_id = %held.credentials.access_key_id,
                        expires_at = %crate::clock::format_instant(held.expires_at),
                        refresh_at = %crate::clock::format_instant(held.refresh_at),
                        "credentials fetched"
                    );
                    let credentials = Arc::clone(&held.credentials);
                    *self.current.write().expect("the credentials lock is never poisoned: nothing panics holding it") =
                        Some(held);
                    self.pinned.store(index, Ordering::Release);
                    state.retry_at = None;
                    state.last_error = None;
                    return Some(credentials);
                }
                Err(error) => errors.push(format!("{}: {error}", source.name())),
            }
        }
        let error = errors.join("; ");
        state.retry_at =
            Some(started + chrono::Duration::from_std(RETRY_AFTER_FAILURE).unwrap_or(chrono::TimeDelta::MAX));
        if let Some(held) = self.held().filter(|held| started < held.expires_at) {
            let rejected_now = rejected.is_some_and(|rejected| Arc::ptr_eq(rejected, &held.credentials));
            if !rejected_now {
                warn!(
                    error = %error,
                    expires_at = %crate::clock::format_instant(held.expires_at),
                    "credential refresh failed; signing with the current credentials until they expire"
                );
            }
        }
        state.last_error = Some(error);
        None
    }

    async fn fetch(&self, source: &RemoteSource, now: DateTime<Utc>) -> Result<Fetched, remote::FetchError> {
        match source {
            RemoteSource::Oidc(settings) => remote::assume_role_with_oidc(&self.clients.remote, settings, now).await,
            RemoteSource::EcsRamRole(settings) => remote::ecs_ram_role(&self.clients.metadata, settings).await,
            RemoteSource::Uri(uri) => remote::credentials_uri(&self.clients.remote, uri).await,
        }
    }
}

/// When to refresh credentials fetched at `fetched_at`: [`REFRESH_AHEAD`] before expiry, or a
/// quarter of their lifetime before it when that is shorter.
pub fn refresh_time(fetched_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> DateTime<Utc> {
    let lifetime = (expires_at - fetched_at).max(chrono::TimeDelta::zero());
    let ahead = chrono::Duration::from_std(REFRESH_AHEAD).unwrap_or(chrono::TimeDelta::MAX).min(lifetime / 4);
    expires_at - ahead
}

fn held_from(fetched: Fetched, fetched_at: DateTime<Utc>) -> Held {
    Held {
        refresh_at: refresh_time(fetched_at, fetched.expires_at),
        expires_at: fetched.expires_at,
        credentials: Arc::new(fetched.credentials),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    #[test]
    fn refresh_is_fifteen_minutes_ahead_or_a_quarter_of_a_short_lifetime() {
        let start = Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap();
        let hour = start + chrono::Duration::hours(1);
        assert_eq!(refresh_time(start, hour), start + chrono::Duration::minutes(45));
        let six_hours = start + chrono::Duration::hours(6);
        assert_eq!(refresh_time(start, six_hours), six_hours - chrono::Duration::minutes(15));
        let twenty_minutes = start + chrono::Duration::minutes(20);
        assert_eq!(refresh_time(start, twenty_minutes), start + chrono::Duration::minutes(15));
        assert_eq!(refresh_time(start, start - chrono::Duration::minutes(1)), start - chrono::Duration::minutes(1));
    }
}
