//! The one claim loop behind both of the daemon's queues (tickets to poll, webhook deliveries to
//! send): gather free slots, wait until the earliest row is due (per the database), claim what is
//! due under a named lease, and hand each claimed item to its handler in a `TaskTracker`, one
//! slot per item. A queue may ask for items claimed ahead ([`Shape::ahead`]): held in hand, they
//! fill slots the moment those free, while the next claim waits its turn at the database.
//!
//! A queue says what its items are and how to look for, claim and handle them by implementing
//! [`Queue`]. [`claim_once`] is one step (claim what is due now and hand it out); [`step_once`]
//! is the same step run to completion, which tests drive until [`Step::Idle`];
//! [`run_until_cancelled`] is the daemon's loop. No SQL and no HTTP here: both are behind the
//! queue's methods.

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, Span, debug, error};

use crate::service::Heartbeat;
use crate::store::Lease;

/// What one claim did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many items were claimed and handed out (at least one).
    Claimed(usize),
    /// Nothing could be claimed.
    Idle,
}

/// How many items a queue works on at once and how it paces its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Most items in flight at once (at least 1).
    pub max_in_flight: usize,
    /// Free slots worth gathering before a claim while items are in flight: claiming for one free
    /// slot at a time costs a read and a write per item. 1 claims for any free slot at once.
    pub batch: usize,
    /// Longest the loop waits to gather [`Shape::batch`] free slots.
    pub window: Duration,
    /// Longest the loop sleeps before looking for new or newly due rows: the safety net for
    /// rows other programs write, should [`Queue::outside_change`] miss them or not be offered.
    pub wake_interval: Duration,
    /// Items the loop claims beyond its free slots while rows keep coming due, kept ready for the
    /// next slots to free (0: claim for free slots only). A claim waits its turn at the database;
    /// without items in hand, every slot that frees meanwhile stays empty until the next claim
    /// returns.
    pub ahead: usize,
}

/// A queue of rows that come due, as the claim loop sees it.
pub trait Queue: Send + Sync + 'static {
    /// One claimed row.
    type Item: Send + 'static;
    /// What looking for or claiming rows can fail with.
    type Error: Display + Send;

    /// The rows in plural, for log messages ("tickets").
    const ROWS: &'static str;
    /// One row, for log messages ("ticket").
    const ROW: &'static str;

    /// Slots and pacing.
    fn shape(&self) -> Shape;
    /// The prefix of every lease this queue's claims write; the loop appends the claim's number.
    fn lease_prefix(&self) -> String;
    /// The loop's progress counter.
    fn heartbeat(&self) -> &Heartbeat;
    /// Notified after each handled item (a slot is free, a row may be due again).
    fn wake(&self) -> &Notify;
    /// Notified by others in this process when they write new rows, if anyone does.
    fn written(&self) -> Option<&Notify> {
        None
    }
    /// Resolves when others (another program) may have written rows, if the queue can tell.
    /// Polled only while the loop waits for a due row, and dropped when the wait ends otherwise;
    /// the default never resolves.
    fn outside_change(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
    /// The current time, for claims and due times.
    fn now(&self) -> DateTime<Utc>;
    /// Runs before each look for the next due row (a repair the queue makes now and then).
    fn before_looking(&self, _now: DateTime<Utc>) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The earliest time a row is due, if any row is waiting.
    fn next_due_at(&self) -> impl Future<Output = Result<Option<DateTime<Utc>>, Self::Error>> + Send;
    /// Claims up to `limit` rows due at `now` under `lease`, earliest first.
    fn claim(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Self::Item>, Self::Error>> + Send;
    /// The span one item is handled in.
    fn span(&self, item: &Self::Item) -> Span;
    /// Works on one claimed item; `slot` is its share of [`Shape::max_in_flight`], to give back
    /// as soon as the item no longer needs it.
    fn process(
        self: Arc<Self>,
        item: Self::Item,
        lease: Lease,
        slot: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send;
}

/// Claims what is due now for the slots in `slots` (one item per slot) under `lease`, and
/// spawns the handling of each item in `tracker`. Slots not needed are given back.
pub async fn claim_once<Q: Queue>(
    queue: &Arc<Q>,
    lease: &Lease,
    slots: OwnedSemaphorePermit,
    tracker: &TaskTracker,
) -> Result<Step, Q::Error> {
    let limit = u32::try_from(slots.num_permits()).unwrap_or(u32::MAX);
    let items = queue.claim(lease, queue.now(), limit).await?;
    queue.heartbeat().beat();
    if items.is_empty() {
        return Ok(Step::Idle);
    }
    let claimed = items.len();
    let mut ready = items.into_iter().map(|item| (item, lease.clone())).collect();
    hand_out(queue, &mut ready, slots, tracker);
    Ok(Step::Claimed(claimed))
}

/// Spawns the handling of ready items in `tracker`, earliest claimed first, one per slot of
/// `slots`, while both last. Slots left over are given back.
fn hand_out<Q: Queue>(
    queue: &Arc<Q>,
    ready: &mut VecDeque<(Q::Item, Lease)>,
    mut slots: OwnedSemaphorePermit,
    tracker: &TaskTracker,
) {
    while slots.num_permits() > 0 {
        let Some((item, lease)) = ready.pop_front() else { break };
        let slot = slots.split(1).expect("a permit is left");
        let queue = Arc::clone(queue);
        let span = queue.span(&item);
        tracker.spawn(
            async move {
                Arc::clone(&queue).process(item, lease, slot).await;
                queue.wake().notify_one();
            }
            .instrument(span),
        );
    }
}

/// One step run to completion: claims what is due now (up to [`Shape::max_in_flight`] items)
/// under the lease `{prefix}step-{step}`, and returns once every claimed item is handled.
/// Driving steps until [`Step::Idle`] works the queue off without the loop.
pub async fn step_once<Q: Queue>(queue: &Arc<Q>, step: u64) -> Result<Step, Q::Error> {
    let slots = Arc::new(Semaphore::new(queue.shape().max_in_flight.max(1)));
    let all = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
    let slots = slots.try_acquire_many_owned(all).expect("a fresh semaphore has every permit free");
    let lease = Lease(format!("{}step-{step}", queue.lease_prefix()));
    let tracker = TaskTracker::new();
    let step = claim_once(queue, &lease, slots, &tracker).await;
    tracker.close();
    tracker.wait().await;
    step
}

/// Runs [`step_once`] until it is idle; returns how many items were handled in all.
pub async fn drain<Q: Queue>(queue: &Arc<Q>) -> Result<usize, Q::Error> {
    let mut handled = 0;
    let mut step = 0;
    loop {
        step += 1;
        match step_once(queue, step).await? {
            Step::Claimed(claimed) => handled += claimed,
            Step::Idle => return Ok(handled),
        }
    }
}

/// Claims and hands out until `shutdown` is cancelled. Items in flight run in `tracker`; the
/// caller waits for them (with a grace period) after this returns.
///
/// With nothing in hand, a turn takes a free slot (beating the heartbeat while every slot is
/// busy: the loop is waiting, not stuck), gathers up to [`Shape::batch`] slots for at most
/// [`Shape::window`] while items are in flight, waits until a row is due, and claims for every
/// free slot, plus [`Shape::ahead`] items to keep in hand, under the lease `{prefix}{n}`.
/// Claimed items go to free slots as soon as there are any. After a full claim more rows are
/// probably due: once half of the items in hand are gone, the next claim starts without looking
/// first, and runs while the loop goes on handing out what it holds. When a row was due but
/// none could be claimed (another claim took it, or a queue limits what it hands out), the loop
/// waits for an item to finish, or for [`Shape::wake_interval`]. Items still in hand, and a
/// claim still running, when the loop stops keep their lease until the caller releases it.
pub async fn run_until_cancelled<Q: Queue>(queue: Arc<Q>, shutdown: CancellationToken, tracker: TaskTracker) {
    let shape = queue.shape();
    let max_in_flight = shape.max_in_flight.max(1);
    let semaphore = Arc::new(Semaphore::new(max_in_flight));
    let heartbeat = queue.heartbeat();
    let mut claims: u64 = 0;
    let mut more_due = false;
    let mut claims_failing = false;
    let mut ready = VecDeque::new();
    let mut claiming: Option<Claiming<Q>> = None;
    loop {
        let free = free_slots(&semaphore);
        hand_out(&queue, &mut ready, free, &tracker);
        if claiming.is_none() {
            if ready.is_empty() {
                let Some(slots) = slots_for_a_claim(&*queue, &shape, &semaphore, more_due, &shutdown).await else {
                    break;
                };
                claims += 1;
                claiming = Some(Claiming::start(&queue, claims, slots, shape.ahead, !more_due));
            } else if more_due && ready.len() <= shape.ahead / 2 {
                claims += 1;
                let slots = free_slots(&semaphore);
                claiming = Some(Claiming::start(&queue, claims, slots, shape.ahead - ready.len(), false));
            }
        }
        let claimed = async {
            match claiming.as_mut() {
                Some(claiming) => (&mut claiming.claim).await,
                None => std::future::pending().await,
            }
        };
        let slot =
            async { if ready.is_empty() { std::future::pending().await } else { heartbeat.acquire(&semaphore).await } };
        let pause = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            claimed = claimed => {
                let Claiming { slots, wanted, looked, .. } = claiming.take().expect("a claim was running");
                heartbeat.beat();
                match claimed {
                    Ok(items) => {
                        claims_failing = false;
                        more_due = items.len() == wanted;
                        let idle = items.is_empty();
                        ready.extend(items);
                        hand_out(&queue, &mut ready, slots, &tracker);
                        (idle && looked).then_some(Pause::UntilWoken)
                    }
                    Err(error) => {
                        drop(slots);
                        more_due = false;
                        // Once per run of failures (a lost database fails every claim until it is back).
                        if claims_failing {
                            debug!(error = %error, "claiming due {} failed again", Q::ROWS);
                        } else {
                            error!(error = %error, "claiming due {} failed", Q::ROWS);
                        }
                        claims_failing = true;
                        // Items in hand go out first, as slots free; the pause comes once they are gone.
                        ready.is_empty().then_some(Pause::AfterFailure)
                    }
                }
            }
            slot = slot => {
                hand_out(&queue, &mut ready, slot, &tracker);
                None
            }
        };
        let go_on = match pause {
            None => true,
            Some(Pause::UntilWoken) => tokio::select! {
                biased;
                () = shutdown.cancelled() => false,
                () = queue.wake().notified() => true,
                () = heartbeat.sleep(shape.wake_interval) => true,
            },
            Some(Pause::AfterFailure) => tokio::select! {
                () = shutdown.cancelled() => false,
                () = heartbeat.sleep(shape.wake_interval) => true,
            },
        };
        if !go_on {
            break;
        }
    }
}

/// Why the loop waits before its next turn.
enum Pause {
    /// The claim looked, found a row due, and got none: until an item finishes, or the wake
    /// interval.
    UntilWoken,
    /// The claim failed and nothing is in hand: the wake interval.
    AfterFailure,
}

/// Claimed items, each with the lease it was claimed under, or why the claim failed.
type Claimed<Q> = Result<Vec<(<Q as Queue>::Item, Lease)>, <Q as Queue>::Error>;

/// A claim running while the loop hands out what it holds.
struct Claiming<Q: Queue> {
    claim: std::pin::Pin<Box<dyn Future<Output = Claimed<Q>> + Send>>,
    /// Slots held for the claim's items since the claim started.
    slots: OwnedSemaphorePermit,
    /// Items asked for: a claim that gets them all leaves more due.
    wanted: usize,
    /// Whether the loop looked for a due row before this claim.
    looked: bool,
}

impl<Q: Queue> Claiming<Q> {
    /// Claims, under the lease `{prefix}{number}`, for every slot of `slots` and `ahead` items
    /// more.
    fn start(queue: &Arc<Q>, number: u64, slots: OwnedSemaphorePermit, ahead: usize, looked: bool) -> Claiming<Q> {
        let lease = Lease(format!("{}{number}", queue.lease_prefix()));
        let wanted = slots.num_permits() + ahead;
        let limit = u32::try_from(wanted).unwrap_or(u32::MAX);
        let queue = Arc::clone(queue);
        let claim = Box::pin(async move {
            let items = queue.claim(&lease, queue.now(), limit).await?;
            Ok(items.into_iter().map(|item| (item, lease.clone())).collect())
        });
        Claiming { claim, slots, wanted, looked }
    }
}

/// Every slot free now (none, when none is).
fn free_slots(semaphore: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    let free = u32::try_from(semaphore.available_permits()).unwrap_or(0);
    Arc::clone(semaphore).try_acquire_many_owned(free).expect("only the loop takes slots")
}

/// The slots for a claim when nothing is in hand: a free slot, then up to [`Shape::batch`] of
/// them gathered for at most [`Shape::window`] while items are in flight, then (unless more rows
/// were due) a wait until a row is due, then every slot still free. `None` when cancelled.
async fn slots_for_a_claim<Q: Queue>(
    queue: &Q,
    shape: &Shape,
    semaphore: &Arc<Semaphore>,
    more_due: bool,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    let max_in_flight = shape.max_in_flight.max(1);
    let mut slots = tokio::select! {
        biased;
        () = shutdown.cancelled() => return None,
        slot = queue.heartbeat().acquire(semaphore) => slot,
    };
    if slots.num_permits() < shape.batch && semaphore.available_permits() + 1 < max_in_flight {
        let window = tokio::time::sleep(shape.window);
        tokio::pin!(window);
        while slots.num_permits() < shape.batch {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                slot = Arc::clone(semaphore).acquire_owned() => {
                    slots.merge(slot.expect("the semaphore is never closed"));
                }
                () = &mut window => break,
            }
        }
    }
    if !more_due && !wait_until_due(queue, shutdown).await {
        return None;
    }
    if shutdown.is_cancelled() {
        return None;
    }
    slots.merge(free_slots(semaphore));
    Some(slots)
}

/// Waits until a row is due: looks up the earliest due time, then sleeps until then (at most the
/// wake interval and the heartbeat), an item finishes, new rows are written in this process, or
/// the queue reports an outside change. Returns `false` when cancelled first.
async fn wait_until_due<Q: Queue>(queue: &Q, shutdown: &CancellationToken) -> bool {
    let shape = queue.shape();
    let heartbeat = queue.heartbeat();
    let mut failing = false;
    loop {
        heartbeat.beat();
        let now = queue.now();
        queue.before_looking(now).await;
        let wait = match queue.next_due_at().await {
            Ok(Some(due)) if due <= now => return true,
            Ok(Some(due)) => (due - now).to_std().unwrap_or(Duration::ZERO).min(shape.wake_interval),
            Ok(None) => shape.wake_interval,
            Err(error) => {
                // Logged once per run of failures; and no other wake-up cuts the pause short,
                // since a lost connection also wakes the listener, which would spin this loop.
                if failing {
                    debug!(error = %error, "reading the next due {} failed again", Q::ROW);
                } else {
                    error!(error = %error, "reading the next due {} failed", Q::ROW);
                }
                failing = true;
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(shape.wake_interval.min(heartbeat.every)) => {}
                }
                continue;
            }
        }
        .min(heartbeat.every);
        failing = false;
        let written = async {
            match queue.written() {
                Some(written) => written.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return false,
            () = written => {}
            () = queue.wake().notified() => {}
            () = queue.outside_change() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::TimeZone as _;
    use tokio::sync::watch;

    use super::*;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    #[derive(Debug)]
    struct Row {
        id: usize,
        due: DateTime<Utc>,
        leased: bool,
    }

    /// A queue of numbered rows kept in memory. `process` holds each item until `gate` gives it
    /// a permit (when `gated`), and counts what it sees.
    struct Rows {
        rows: Mutex<Vec<Row>>,
        max_in_flight: usize,
        ahead: usize,
        heartbeat: Heartbeat,
        wake: Notify,
        written: Notify,
        gated: bool,
        gate: Arc<Semaphore>,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
        handled: Mutex<Vec<usize>>,
        /// How many items have started, and how many have finished, for tests to wait on.
        started: watch::Sender<usize>,
        finished: watch::Sender<usize>,
        leases: Mutex<Vec<String>>,
    }

    impl Rows {
        fn new(max_in_flight: usize, due: &[i64], gated: bool) -> Arc<Rows> {
            Rows::claiming_ahead(max_in_flight, 0, due, gated)
        }

        fn claiming_ahead(max_in_flight: usize, ahead: usize, due: &[i64], gated: bool) -> Arc<Rows> {
            let rows = due.iter().enumerate().map(|(id, secs)| Row {
                id,
                due: start() + chrono::Duration::seconds(*secs),
                leased: false,
            });
            Arc::new(Rows {
                rows: Mutex::new(rows.collect()),
                max_in_flight,
                ahead,
                // Long, so that only a wake or a write ends a wait.
                heartbeat: Heartbeat::new(Duration::from_secs(3600)),
                wake: Notify::new(),
                written: Notify::new(),
                gated,
                gate: Arc::new(Semaphore::new(0)),
                in_flight: AtomicUsize::new(0),
                most_in_flight: AtomicUsize::new(0),
                handled: Mutex::new(Vec::new()),
                started: watch::channel(0).0,
                finished: watch::channel(0).0,
                leases: Mutex::new(Vec::new()),
            })
        }

        fn leased(&self) -> usize {
            self.rows.lock().unwrap().iter().filter(|row| row.leased).count()
        }

        fn handled(&self) -> Vec<usize> {
            let mut handled = self.handled.lock().unwrap().clone();
            handled.sort_unstable();
            handled
        }

        async fn wait_started(&self, count: usize) {
            let mut started = self.started.subscribe();
            tokio::time::timeout(Duration::from_secs(30), started.wait_for(|started| *started >= count))
                .await
                .expect("the items start in time")
                .expect("the queue is alive");
        }

        async fn wait_finished(&self, count: usize) {
            let mut finished = self.finished.subscribe();
            tokio::time::timeout(Duration::from_secs(30), finished.wait_for(|finished| *finished >= count))
                .await
                .expect("the items finish in time")
                .expect("the queue is alive");
        }
    }

    impl Queue for Rows {
        type Item = usize;
        type Error = std::convert::Infallible;

        const ROWS: &'static str = "rows";
        const ROW: &'static str = "row";

        fn shape(&self) -> Shape {
            Shape {
                max_in_flight: self.max_in_flight,
                batch: 1,
                window: Duration::ZERO,
                wake_interval: Duration::from_secs(3600),
                ahead: self.ahead,
            }
        }

        fn lease_prefix(&self) -> String {
            "test#".to_owned()
        }

        fn heartbeat(&self) -> &Heartbeat {
            &self.heartbeat
        }

        fn wake(&self) -> &Notify {
            &self.wake
        }

        fn written(&self) -> Option<&Notify> {
            Some(&self.written)
        }

        fn now(&self) -> DateTime<Utc> {
            start()
        }

        async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>, Self::Error> {
            Ok(self.rows.lock().unwrap().iter().filter(|row| !row.leased).map(|row| row.due).min())
        }

        async fn claim(&self, lease: &Lease, now: DateTime<Utc>, limit: u32) -> Result<Vec<usize>, Self::Error> {
            let free = self.max_in_flight - self.in_flight.load(Ordering::SeqCst);
            assert!(limit as usize <= free + self.ahead, "claimed for {limit} items with {free} slots free");
            self.leases.lock().unwrap().push(lease.0.clone());
            let mut rows = self.rows.lock().unwrap();
            let mut claimed = Vec::new();
            for row in rows.iter_mut().filter(|row| !row.leased && row.due <= now).take(limit as usize) {
                row.leased = true;
                claimed.push(row.id);
            }
            Ok(claimed)
        }

        fn span(&self, _item: &usize) -> Span {
            Span::none()
        }

        async fn process(self: Arc<Self>, item: usize, _lease: Lease, slot: OwnedSemaphorePermit) {
            let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(in_flight, Ordering::SeqCst);
            self.started.send_modify(|started| *started += 1);
            if self.gated {
                self.gate.acquire().await.expect("the gate stays open").forget();
            }
            self.handled.lock().unwrap().push(item);
            self.rows.lock().unwrap().retain(|row| row.id != item);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(slot);
            self.finished.send_modify(|finished| *finished += 1);
        }
    }

    /// Runs the loop over `rows`: its shutdown token, its tracker and its task.
    fn start_loop(rows: &Arc<Rows>) -> (CancellationToken, TaskTracker, tokio::task::JoinHandle<()>) {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let run = tokio::spawn(run_until_cancelled(Arc::clone(rows), shutdown.clone(), tracker.clone()));
        (shutdown, tracker, run)
    }

    /// Cancels the loop and waits for it to stop.
    async fn stop_loop(shutdown: &CancellationToken, run: tokio::task::JoinHandle<()>) {
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), run).await.expect("the loop stops").expect("it joins");
    }

    #[tokio::test]
    async fn steps_claim_each_due_item_once_and_then_are_idle() {
        let rows = Rows::new(4, &[0, 0, 0, 0, 0, 0, 0, 0, 0, -5, 60], false);
        assert_eq!(step_once(&rows, 1).await, Ok(Step::Claimed(4)), "one step claims up to the slots");
        assert_eq!(drain(&rows).await, Ok(6));
        assert_eq!(rows.handled(), (0..10).collect::<Vec<_>>(), "every due item once, the later one not");
        assert_eq!(step_once(&rows, 9).await, Ok(Step::Idle));
        assert_eq!(rows.leases.lock().unwrap()[0], "test#step-1");
    }

    #[tokio::test]
    async fn a_step_is_idle_when_nothing_is_due() {
        let rows = Rows::new(4, &[30, 60], false);
        assert_eq!(step_once(&rows, 1).await, Ok(Step::Idle));
        assert_eq!(drain(&rows).await, Ok(0));
        assert!(rows.handled().is_empty());
    }

    #[tokio::test]
    async fn the_loop_never_has_more_items_in_flight_than_slots_and_claims_each_once() {
        let rows = Rows::new(3, &[0; 20], true);
        let (shutdown, _tracker, run) = start_loop(&rows);
        rows.wait_started(3).await;
        assert_eq!(rows.in_flight.load(Ordering::SeqCst), 3);
        rows.gate.add_permits(20);
        rows.wait_finished(20).await;
        assert_eq!(rows.most_in_flight.load(Ordering::SeqCst), 3, "every slot used, never more");
        assert_eq!(rows.handled(), (0..20).collect::<Vec<_>>());
        let leases = rows.leases.lock().unwrap().clone();
        assert!(leases.iter().enumerate().all(|(n, lease)| *lease == format!("test#{}", n + 1)), "{leases:?}");
        stop_loop(&shutdown, run).await;
    }

    #[tokio::test]
    async fn items_claimed_ahead_wait_in_hand_for_slots_and_each_is_handled_once() {
        let rows = Rows::claiming_ahead(3, 4, &[0; 20], true);
        let (shutdown, _tracker, run) = start_loop(&rows);
        rows.wait_started(3).await;
        // The first claim took one item per free slot and four more; more than half of those are
        // still in hand, so no second claim has started.
        assert_eq!(rows.leased(), 7);
        assert_eq!(rows.leases.lock().unwrap().len(), 1);
        rows.gate.add_permits(20);
        rows.wait_finished(20).await;
        assert_eq!(rows.most_in_flight.load(Ordering::SeqCst), 3, "items in hand never run without a slot");
        assert_eq!(rows.handled(), (0..20).collect::<Vec<_>>(), "each item once");
        stop_loop(&shutdown, run).await;
    }

    #[tokio::test]
    async fn items_in_hand_when_the_loop_stops_keep_their_lease_and_are_not_started() {
        let rows = Rows::claiming_ahead(2, 2, &[0; 6], true);
        let (shutdown, tracker, run) = start_loop(&rows);
        rows.wait_started(2).await;
        stop_loop(&shutdown, run).await;
        tracker.close();
        rows.gate.add_permits(6);
        tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await.expect("the items finish");
        assert_eq!(rows.handled(), vec![0, 1], "only the items with a slot ran");
        assert_eq!(rows.leased(), 2, "the two in hand are still leased, for the caller to release");
    }

    #[tokio::test]
    async fn the_loop_stops_on_cancel_and_leaves_claimed_items_to_finish_in_the_tracker() {
        let rows = Rows::new(2, &[0, 3600], true);
        let (shutdown, tracker, run) = start_loop(&rows);
        rows.wait_started(1).await;
        stop_loop(&shutdown, run).await;
        tracker.close();
        assert!(!tracker.is_empty(), "the claimed item is still running");
        rows.gate.add_permits(1);
        tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await.expect("the item finishes");
        assert_eq!(rows.handled(), vec![0], "the item due later is never claimed");
    }

    #[tokio::test]
    async fn rows_written_in_process_are_claimed_at_once_not_after_the_wake_interval() {
        let rows = Rows::new(2, &[3600], false);
        let (shutdown, _tracker, run) = start_loop(&rows);
        rows.rows.lock().unwrap().push(Row { id: 7, due: start(), leased: false });
        // Every timer of the loop is an hour long: only the notice can bring the row in time.
        rows.written.notify_one();
        rows.wait_finished(1).await;
        assert_eq!(rows.handled(), vec![7]);
        stop_loop(&shutdown, run).await;
    }
}
