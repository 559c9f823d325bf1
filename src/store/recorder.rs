//! Group commit for poll results. Many polls finish at about the same time; writing each in its
//! own transaction makes SQLite's single writer the bottleneck (every commit appends pages to the
//! WAL, every statement is a round trip to the connection's thread). [`Recorder`] funnels the
//! writes to one task that writes whatever is waiting in one `BEGIN IMMEDIATE` transaction: every
//! row update in one multi-row statement, then the final states' webhook deliveries. If any write
//! of a batch fails (a constraint; in practice never), the batch is written again with a
//! savepoint per write, so that the failing write fails alone. Every caller is answered once its
//! batch commits.
//!
//! On SQLite the poller's claims go through the same task ([`Recorder::claim_due_tickets`]): a
//! claim waiting with results is made inside their transaction, in the same call as their
//! `UPDATE`, so that a poll cycle (the results of the polls that just ended, the claim for the
//! slots they freed) costs the single writer one commit instead of two. When no final state of
//! the batch can have anything to announce, the `COMMIT` goes in that same call too
//! ([`Commit::InCall`]): one call per cycle instead of two. After each batch, SQLite's WAL is
//! copied back into the file by `sqlite::checkpoint`, off the writer's path.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::deliveries::Handoff;
use super::session::{Commit, PollResult, ResultWrite, Session};
use super::sqlite::checkpoint::Checkpointer;
use super::tickets::{Announcement, DueClaim, Finish, Reschedule, Ticket};
use super::{Backend, Lease, Store, is_retryable};
use crate::domain::RowId;

/// Most writes one transaction takes.
pub const MAX_BATCH: usize = 256;

/// Plans a final state's announcement from the final row (see `Store::record_final`). The plan
/// may run more than once when a batch is retried, so it must not have side effects.
#[derive(Clone)]
pub struct Announce {
    plan: Arc<dyn Fn(&Ticket) -> Announcement + Send + Sync>,
    every_ticket: bool,
}

impl Announce {
    /// Every final state is planned by `plan` (receivers are configured for every ticket).
    pub fn every_ticket(plan: impl Fn(&Ticket) -> Announcement + Send + Sync + 'static) -> Announce {
        Announce { plan: Arc::new(plan), every_ticket: true }
    }

    /// Only the final states of tickets naming a receiver of their own (`webhook_url`) are planned
    /// by `plan`; the others have nothing to announce, and their final rows are not read back.
    pub fn own_receivers_only(plan: impl Fn(&Ticket) -> Announcement + Send + Sync + 'static) -> Announce {
        Announce { plan: Arc::new(plan), every_ticket: false }
    }

    /// The announcement of `row`'s final state.
    pub fn plan(&self, row: &Ticket) -> Announcement {
        (self.plan)(row)
    }

    /// The same announcements, written under the delivery lease `handoff`.
    #[must_use]
    pub fn with_handoff(self, handoff: Handoff) -> Announce {
        let plan = self.plan;
        Announce {
            plan: Arc::new(move |row: &Ticket| Announcement { handoff: Some(handoff.clone()), ..plan(row) }),
            every_ticket: self.every_ticket,
        }
    }

    /// Whether a final row with (or without) a receiver of its own may have anything to announce.
    fn reads_row(&self, own_receiver: bool) -> bool {
        self.every_ticket || own_receiver
    }
}

impl std::fmt::Debug for Announce {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Announce").field("every_ticket", &self.every_ticket).finish_non_exhaustive()
    }
}

/// A handle for recording poll results through the group-commit task. Cheap to clone; the task
/// ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Recorder {
    jobs: mpsc::Sender<Job>,
    store: Store,
}

enum Job {
    Progress {
        lease: Lease,
        id: RowId,
        now: DateTime<Utc>,
        update: Reschedule,
        reply: oneshot::Sender<Result<bool, Arc<sqlx::Error>>>,
    },
    Final {
        lease: Lease,
        id: RowId,
        now: DateTime<Utc>,
        finish: Finish,
        announce: Announce,
        /// The row named a receiver of its own when it was claimed.
        claimed_receiver: bool,
        reply: oneshot::Sender<Result<Option<usize>, Arc<sqlx::Error>>>,
    },
    Claim {
        claim: DueClaim,
        reply: oneshot::Sender<Result<Vec<Ticket>, Arc<sqlx::Error>>>,
    },
}

impl Job {
    /// The poll result this job writes; `None` for a claim.
    fn write(&self) -> Option<ResultWrite<'_>> {
        match self {
            Job::Progress { lease, id, now, update, .. } => {
                Some(ResultWrite { lease, id: *id, now: *now, result: PollResult::Progress(update) })
            }
            Job::Final { lease, id, now, finish, .. } => {
                Some(ResultWrite { lease, id: *id, now: *now, result: PollResult::Final(finish) })
            }
            Job::Claim { .. } => None,
        }
    }

    /// The claim this job makes; `None` for a poll result.
    fn claim(&self) -> Option<&DueClaim> {
        match self {
            Job::Claim { claim, .. } => Some(claim),
            Job::Progress { .. } | Job::Final { .. } => None,
        }
    }

    /// Whether this job is a final state that may have anything to announce, judged by its row
    /// as claimed.
    fn may_announce(&self) -> bool {
        match self {
            Job::Final { announce, claimed_receiver, .. } => announce.reads_row(*claimed_receiver),
            Job::Progress { .. } | Job::Claim { .. } => false,
        }
    }
}

/// A write or claim the recorder could not make; a ticket whose result was not written is polled
/// again when its lease lapses.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The database refused the batch the write was in, or the claim. Every waiter of a batch
    /// shares the one error.
    #[error("{0}")]
    Database(#[source] Arc<sqlx::Error>),
    /// The recorder task is gone (shutdown), so the job was not taken.
    #[error("the recorder has stopped")]
    Stopped,
    /// The recorder task ended after taking the job but before answering.
    #[error("the recorder stopped before answering")]
    StoppedBeforeAnswering,
}

impl From<sqlx::Error> for RecordError {
    fn from(error: sqlx::Error) -> Self {
        RecordError::Database(Arc::new(error))
    }
}

impl Store {
    /// Starts the group-commit task for this store and returns its handle, plus the task to await
    /// at shutdown (it ends once every handle is dropped and the last batch is written).
    pub fn recorder(&self) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (jobs, receiver) = mpsc::channel(MAX_BATCH * 4);
        let checkpointer = match &self.backend {
            Backend::Sqlite(backend) => Some(backend.checkpointer()),
            Backend::Postgres(_) => None,
        };
        let task = tokio::spawn(run(self.clone(), receiver, checkpointer));
        (Recorder { jobs, store: self.clone() }, task)
    }
}

impl Recorder {
    /// [`Store::record_progress`], committed with whatever else is waiting.
    pub async fn record_progress(
        &self,
        lease: &Lease,
        id: RowId,
        now: DateTime<Utc>,
        update: &Reschedule,
    ) -> Result<bool, RecordError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Progress { lease: lease.clone(), id, now, update: update.clone(), reply };
        self.submit(job, answer).await
    }

    /// [`Store::record_final`] for `claimed`, the row as it was claimed, committed with whatever
    /// else is waiting.
    pub async fn record_final(
        &self,
        lease: &Lease,
        claimed: &Ticket,
        now: DateTime<Utc>,
        finish: &Finish,
        announce: Announce,
    ) -> Result<Option<usize>, RecordError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Final {
            lease: lease.clone(),
            id: claimed.id,
            now,
            finish: finish.clone(),
            announce,
            claimed_receiver: claimed.webhook_url.is_some(),
            reply,
        };
        self.submit(job, answer).await
    }

    /// [`Store::claim_due_tickets`]. On SQLite the claim joins the results waiting to be written
    /// (see the module's doc); PostgreSQL claims on a connection of its own, at once.
    pub async fn claim_due_tickets(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
        lease_for: std::time::Duration,
        limit: u32,
        default_deadline: std::time::Duration,
    ) -> Result<Vec<Ticket>, RecordError> {
        let claim = DueClaim { lease: lease.clone(), now, lease_for, limit, default_deadline };
        match &self.store.backend {
            Backend::Sqlite(_) => {
                let (reply, answer) = oneshot::channel();
                self.submit(Job::Claim { claim, reply }, answer).await
            }
            Backend::Postgres(backend) => Ok(backend.claim_due_tickets(&claim).await?),
        }
    }

    async fn submit<T>(
        &self,
        job: Job,
        answer: oneshot::Receiver<Result<T, Arc<sqlx::Error>>>,
    ) -> Result<T, RecordError> {
        self.jobs.send(job).await.map_err(|_| RecordError::Stopped)?;
        match answer.await {
            Ok(result) => result.map_err(RecordError::Database),
            Err(_) => Err(RecordError::StoppedBeforeAnswering),
        }
    }
}

/// Most batches in a row written on one checkout of SQLite's writer connection.
const BATCHES_PER_CHECKOUT: usize = 8;

async fn run(store: Store, mut receiver: mpsc::Receiver<Job>, checkpointer: Option<Checkpointer>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // SQLite's writer connection, kept from one batch to the next while jobs keep coming: a
    // checkout costs a task and a round trip to the connection's thread when it is given back.
    // It goes back when the queue runs dry, or after a few batches, so that the other writes of
    // this process (webhook deliveries, maintenance) wait no longer than that.
    let mut writer = None;
    let mut batches = 0;
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write_batch(&store, std::mem::take(&mut batch), &mut writer).await;
        if let Some(checkpointer) = &checkpointer {
            checkpointer.committed();
        }
        batches += 1;
        if receiver.is_empty() || batches == BATCHES_PER_CHECKOUT {
            writer = None;
            batches = 0;
        }
    }
}

/// The SQLite writer connection the recorder holds between batches, if any.
type Writer = Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>;

/// Writes one batch, retrying the whole transaction with jittered backoff (an in-process retry,
/// nothing persisted) while another program holds the write lock past `busy_timeout`. Every job
/// gets an answer.
async fn write_batch(store: &Store, jobs: Vec<Job>, writer: &mut Writer) {
    use backon::Retryable as _;
    let state = tokio::sync::Mutex::new((jobs, writer.take()));
    let shared = &state;
    let policy = super::busy_retry_policy();
    let result = (move || async move {
        let mut state = shared.lock().await;
        let (jobs, writer) = &mut *state;
        // Fast path: the whole batch in one transaction, one statement per write. A write that
        // fails (a constraint, in practice never) sends the batch down the slow path, where
        // each write has a savepoint of its own and fails alone.
        match try_batch(store, jobs, Isolation::Shared, writer).await {
            Err(BatchError::Job(_)) => try_batch(store, jobs, Isolation::PerJob, writer).await,
            other => other,
        }
        .map_err(BatchError::into_sqlx)
    })
    .retry(policy)
    .when(is_retryable)
    .notify(|error, delay| {
        // A lost connection is logged once per episode by the backend, not once per batch.
        if super::postgres::errors::is_connection_error(error) {
            tracing::debug!(error = %error, delay_ms = delay.as_millis(), "database unreachable; retrying the write batch");
        } else {
            tracing::warn!(error = %error, delay_ms = delay.as_millis(), "database busy; retrying the write batch");
        }
    })
    .await;
    let (jobs, kept) = state.into_inner();
    *writer = kept;
    if let Err(error) = result {
        let error = Arc::new(error);
        tracing::error!(
            error = %error,
            writes = jobs.iter().filter(|job| job.claim().is_none()).count(),
            "writing poll results failed; those tickets are polled again when their leases lapse"
        );
        for job in jobs {
            match job {
                Job::Progress { reply, .. } => drop(reply.send(Err(Arc::clone(&error)))),
                Job::Final { reply, .. } => drop(reply.send(Err(Arc::clone(&error)))),
                Job::Claim { reply, .. } => drop(reply.send(Err(Arc::clone(&error)))),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No savepoints: any failing write aborts the batch.
    Shared,
    /// A savepoint per write: a failing write is rolled back alone and reported to its caller.
    PerJob,
}

enum BatchError {
    /// The transaction itself failed (begin, commit, savepoint handling): retry the batch.
    Transaction(sqlx::Error),
    /// One write failed on the shared path.
    Job(sqlx::Error),
}

impl BatchError {
    fn into_sqlx(self) -> sqlx::Error {
        match self {
            BatchError::Transaction(error) | BatchError::Job(error) => error,
        }
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        BatchError::Transaction(error)
    }
}

/// One transaction over the batch. On success every job is answered and `jobs` is emptied; on an
/// error nothing is answered (the connection is discarded, which ends the transaction) and `jobs`
/// is left as it was, for another try. On SQLite the batch runs on `writer` when one is held,
/// and the connection is held there after a success.
async fn try_batch(
    store: &Store,
    jobs: &mut Vec<Job>,
    isolation: Isolation,
    writer: &mut Writer,
) -> Result<(), BatchError> {
    match &store.backend {
        Backend::Sqlite(backend) => {
            let mut connection = match writer.take() {
                Some(connection) => connection,
                None => backend.writer.acquire().await?,
            };
            let result = try_batch_on(Session::Sqlite(&mut connection), jobs, isolation).await;
            if result.is_err() {
                super::sqlite::discard_after_failed_transaction(&mut connection);
            } else {
                *writer = Some(connection);
            }
            result
        }
        Backend::Postgres(backend) => {
            // The whole batch under the call timeout on a connection of its own, closed rather
            // than reused when the call fails at the connection level. A batch whose COMMIT got
            // no answer may have committed: it is run again, and its fenced writes then match
            // nothing, so one outcome and one set of deliveries result.
            let mut checkout = backend.checkout().await?;
            let result = tokio::time::timeout(
                backend.call_timeout,
                try_batch_on(Session::Postgres(checkout.connection()), jobs, isolation),
            )
            .await;
            if !matches!(result, Ok(Ok(()))) {
                // The transaction was begun by hand and may still be open (aborted): never reuse
                // the connection.
                checkout.discard();
            }
            let (result, job_failed) = match result {
                Ok(Err(BatchError::Job(error))) => (Ok(Err(error)), true),
                Ok(Err(BatchError::Transaction(error))) => (Ok(Err(error)), false),
                Ok(Ok(())) => (Ok(Ok(())), false),
                Err(elapsed) => (Err(elapsed), false),
            };
            match checkout.settle(result) {
                Ok(()) => Ok(()),
                Err(error) if job_failed => Err(BatchError::Job(error)),
                Err(error) => Err(BatchError::Transaction(error)),
            }
        }
    }
}

/// What one job came to, before its caller is answered.
enum Outcome {
    Progress(Result<bool, sqlx::Error>),
    Final(Result<Option<usize>, sqlx::Error>),
    Claim(Result<Vec<Ticket>, sqlx::Error>),
}

/// The outcomes of a batch's writes and of its claims, each in job order, merged into job order.
fn in_job_order(jobs: &[Job], writes: Vec<Outcome>, claims: Vec<Result<Vec<Ticket>, sqlx::Error>>) -> Vec<Outcome> {
    let mut writes = writes.into_iter();
    let mut claims = claims.into_iter().map(Outcome::Claim);
    jobs.iter()
        .map(|job| match job {
            Job::Claim { .. } => claims.next(),
            Job::Progress { .. } | Job::Final { .. } => writes.next(),
        })
        .map(|outcome| outcome.expect("one outcome per job"))
        .collect()
}

/// [`try_batch`] on one connection. The caller discards the connection when this fails, which
/// ends the transaction.
async fn try_batch_on(mut session: Session<'_>, jobs: &mut Vec<Job>, isolation: Isolation) -> Result<(), BatchError> {
    let outcomes = match isolation {
        Isolation::Shared => write_shared(&mut session, jobs).await?,
        Isolation::PerJob => write_per_job(&mut session, jobs).await?,
    };
    for (job, outcome) in jobs.drain(..).zip(outcomes) {
        // A caller that gave up waiting (shutdown) no longer needs its answer.
        match (job, outcome) {
            (Job::Progress { reply, .. }, Outcome::Progress(result)) => drop(reply.send(result.map_err(Arc::new))),
            (Job::Final { reply, .. }, Outcome::Final(result)) => drop(reply.send(result.map_err(Arc::new))),
            (Job::Claim { reply, .. }, Outcome::Claim(result)) => drop(reply.send(result.map_err(Arc::new))),
            _ => unreachable!("outcomes are pushed in job order, one per job"),
        }
    }
    Ok(())
}

/// The batch in one transaction with no savepoints: every row update in one statement (SQLite's
/// writer spends its time on round trips, not rows) with the batch's claim after them (on
/// SQLite in the same call, see [`Session::begin_and_record`]), then the announcements of the
/// final states that have any, planned from the final rows read inside the transaction. A batch
/// whose final states have nothing to announce, judged by their rows as claimed, commits in that
/// same call on SQLite ([`Commit::InCall`]). Claims the backend left to the caller, and any
/// further claims, follow the commit. Claims with no results to write need no transaction.
async fn write_shared(session: &mut Session<'_>, jobs: &[Job]) -> Result<Vec<Outcome>, BatchError> {
    let writes: Vec<ResultWrite<'_>> = jobs.iter().filter_map(Job::write).collect();
    let mut claims = jobs.iter().filter_map(Job::claim);
    if writes.is_empty() {
        let claimed = claim_each(session, claims).await;
        return Ok(in_job_order(jobs, Vec::new(), claimed));
    }
    let first_claim = claims.next();
    let commit = if jobs.iter().any(Job::may_announce) { Commit::ByCaller } else { Commit::InCall };
    // A busy or lost database fails the transaction (retried as a whole); anything else is a
    // write the database refused, which the per-job path finds.
    let recorded = session
        .begin_and_record(&writes, first_claim, commit)
        .await
        .map_err(|error| if is_retryable(&error) { BatchError::Transaction(error) } else { BatchError::Job(error) })?;
    let results: Vec<&Job> = jobs.iter().filter(|job| job.claim().is_none()).collect();
    // Results are matched to their writes by position, that is by (row, lease): two jobs for
    // one row (a lapsed lease's and the new owner's) get each their own answer.
    let announced: Vec<RowId> = results
        .iter()
        .zip(&recorded.written)
        .filter_map(|(job, written)| match (job, written) {
            (Job::Final { id, announce, .. }, Some(written)) if announce.reads_row(written.own_receiver) => Some(*id),
            _ => None,
        })
        .collect();
    debug_assert!(announced.is_empty() || !recorded.committed, "a batch committed in the call announces nothing");
    let final_rows: std::collections::HashMap<RowId, Ticket> = if announced.is_empty() {
        std::collections::HashMap::new()
    } else {
        let rows = session.tickets(&announced).await.map_err(BatchError::Job)?;
        rows.into_iter().map(|row| (row.id, row)).collect()
    };
    let mut outcomes = Vec::with_capacity(results.len());
    for (job, written) in results.into_iter().zip(recorded.written) {
        let outcome = match job {
            Job::Progress { .. } => Outcome::Progress(Ok(written.is_some())),
            Job::Final { .. } if written.is_none() => Outcome::Final(Ok(None)),
            Job::Final { id, now, announce, .. } => match final_rows.get(id) {
                // No receiver for this ticket: nothing to announce.
                None => Outcome::Final(Ok(Some(0))),
                Some(row) => {
                    let count =
                        session.write_announcement(*id, *now, &announce.plan(row)).await.map_err(BatchError::Job)?;
                    Outcome::Final(Ok(Some(count)))
                }
            },
            Job::Claim { .. } => unreachable!("only the jobs with a write are here"),
        };
        outcomes.push(outcome);
    }
    if !recorded.committed {
        session.execute("COMMIT").await?;
    }
    let mut claimed: Vec<_> = recorded.claimed.into_iter().collect();
    let left_to_us = if claimed.is_empty() { first_claim } else { None };
    claimed.extend(claim_each(session, left_to_us.into_iter().chain(claims)).await);
    Ok(in_job_order(jobs, outcomes, claimed))
}

/// The batch in one transaction with a savepoint per write: a failing write is rolled back alone
/// and reported to its caller. The claims follow the commit, one statement each.
async fn write_per_job(session: &mut Session<'_>, jobs: &[Job]) -> Result<Vec<Outcome>, BatchError> {
    session.begin().await?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs.iter().filter(|job| job.claim().is_none()) {
        session.execute("SAVEPOINT job").await?;
        let outcome = match job {
            Job::Progress { lease, id, now, update, .. } => {
                Outcome::Progress(session.record_progress(lease, *id, *now, update).await)
            }
            Job::Final { lease, id, now, finish, announce, .. } => {
                Outcome::Final(session.record_final(lease, *id, *now, finish, |row| announce.plan(row)).await)
            }
            Job::Claim { .. } => unreachable!("only the jobs with a write are here"),
        };
        if matches!(&outcome, Outcome::Progress(Err(_)) | Outcome::Final(Err(_))) {
            session.execute("ROLLBACK TO job").await?;
        }
        session.execute("RELEASE job").await?;
        outcomes.push(outcome);
    }
    session.execute("COMMIT").await?;
    let claimed = claim_each(session, jobs.iter().filter_map(Job::claim)).await;
    Ok(in_job_order(jobs, outcomes, claimed))
}

/// Makes each claim in turn, one statement each, outside the batch's transaction.
async fn claim_each<'a>(
    session: &mut Session<'_>,
    claims: impl Iterator<Item = &'a DueClaim>,
) -> Vec<Result<Vec<Ticket>, sqlx::Error>> {
    let mut claimed = Vec::new();
    for claim in claims {
        claimed.push(session.claim_due(claim).await);
    }
    claimed
}
