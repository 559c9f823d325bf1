//! The poll loop's learned schedules, one per (workspace, namespace, kind), each learned from the most
//! recent finishes in the table (`Store::recent_run_samples`) and kept for a while. Nothing here
//! is a fact of its own: a schedule is a function of rows, so a restart that reads the same rows
//! learns the same schedule.
//!
//! A schedule is learned again when a ticket of its place finished here (at most once per
//! [`RELEARN_EVERY`], so a busy namespace costs one small read a second, not one per poll) and
//! at least every [`RELEARN_AFTER`] (finishes recorded by other daemons on the same database).
//! At most [`MAX_PLACES`] places are kept; past that the cache starts again from empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use super::learned::{Bounds, LearnedSchedule, MAX_SAMPLES};
use crate::domain::TicketKind;
use crate::store::Store;

/// Shortest time between two learnings of one place's schedule.
pub const RELEARN_EVERY: Duration = Duration::from_secs(1);

/// Longest a schedule is used without reading the table again.
pub const RELEARN_AFTER: Duration = Duration::from_secs(30);

/// Most (workspace, namespace, kind) places whose schedules are kept at once.
pub const MAX_PLACES: usize = 4096;

/// The cache; see the module doc.
#[derive(Debug)]
pub(super) struct History {
    bounds: Bounds,
    /// workspace, then (namespace, kind).
    places: Mutex<Places>,
}

/// Places by workspace, then by (namespace, kind).
type Places = HashMap<String, HashMap<(String, TicketKind), Place>>;

#[derive(Debug)]
struct Place {
    schedule: Option<Arc<LearnedSchedule>>,
    learned_at: Instant,
    /// A ticket of this place finished here since the schedule was learned.
    stale: bool,
}

impl History {
    pub(super) fn new(bounds: Bounds) -> History {
        History { bounds, places: Mutex::new(HashMap::new()) }
    }

    /// The schedule for `kind` tickets of `workspace` and `namespace`: the one kept, or one
    /// learned now from the table when it is missing or due to be learned again. `None` when too
    /// few tickets finished there (or the table could not be read and nothing was kept).
    pub(super) async fn schedule(
        &self,
        store: &Store,
        workspace: &str,
        namespace: &str,
        kind: TicketKind,
    ) -> Option<Arc<LearnedSchedule>> {
        let now = Instant::now();
        let key = (namespace.to_owned(), kind);
        let kept = {
            let mut places = self.places();
            let place = places.get_mut(workspace).and_then(|namespaces| namespaces.get_mut(&key));
            match place {
                Some(place) => {
                    let age = now.duration_since(place.learned_at);
                    if age < RELEARN_AFTER && !(place.stale && age >= RELEARN_EVERY) {
                        return place.schedule.clone();
                    }
                    // Claimed: polls of this place meanwhile keep using the schedule kept.
                    place.learned_at = now;
                    place.stale = false;
                    place.schedule.clone()
                }
                None => {
                    if places.values().map(HashMap::len).sum::<usize>() >= MAX_PLACES {
                        places.clear();
                    }
                    places
                        .entry(workspace.to_owned())
                        .or_default()
                        .insert(key.clone(), Place { schedule: None, learned_at: now, stale: false });
                    None
                }
            }
        };
        let samples = match store.recent_run_samples(workspace, namespace, kind, MAX_SAMPLES).await {
            Ok(samples) => samples,
            Err(error) => {
                debug!(error = %error, "reading finished tickets to learn from failed; keeping the schedule");
                return kept;
            }
        };
        let schedule = LearnedSchedule::learn(&samples, &self.bounds).map(Arc::new);
        if let Some(place) = self.places().get_mut(workspace).and_then(|namespaces| namespaces.get_mut(&key)) {
            place.schedule.clone_from(&schedule);
        }
        schedule
    }

    /// A `kind` ticket of `workspace` and `namespace` finished: its schedule is learned again soon.
    pub(super) fn finished(&self, workspace: &str, namespace: &str, kind: TicketKind) {
        let key = (namespace.to_owned(), kind);
        if let Some(place) = self.places().get_mut(workspace).and_then(|namespaces| namespaces.get_mut(&key)) {
            place.stale = true;
        }
    }

    fn places(&self) -> std::sync::MutexGuard<'_, Places> {
        self.places.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
