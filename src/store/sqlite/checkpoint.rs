//! Copying the WAL back into the database file off the writer's path.
//!
//! SQLite's own checkpoint runs inside the `COMMIT` that takes the WAL past its threshold: the
//! writer copies every page written since the last one and waits for two `fsync`s, and every
//! write queued behind it waits too. While the recorder writes, [`Checkpointer`] does that work
//! on a connection of its own, a short while after each commit, in SQLite's `PASSIVE` mode
//! (which never waits for, nor blocks, the writer or a reader). The writer's own checkpoint
//! stays as the backstop: it runs when the WAL outgrows [`WRITER_CHECKPOINT_PAGES`] anyway (a
//! steady stream of writes that leaves the copying no moment to catch up, or a reader holding an
//! old snapshot), and by then most of the pages are already copied.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::sync::mpsc;
use tracing::debug;

/// WAL pages past which the writer checkpoints by itself (SQLite's default is 1000).
pub(super) const WRITER_CHECKPOINT_PAGES: u32 = 4000;

/// How long the checkpointer lets commits gather before copying them: one checkpoint (two
/// `fsync`s) per this much writing, and the last commit is copied this long after it.
const GATHER: Duration = Duration::from_millis(100);

/// A handle to the task that checkpoints the WAL after commits. The task ends when the handle is
/// dropped.
#[derive(Debug)]
pub(in crate::store) struct Checkpointer {
    commits: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts the task, which opens its connection with `options` at its first checkpoint.
    pub(in crate::store) fn start(options: SqliteConnectOptions) -> Checkpointer {
        let (commits, receiver) = mpsc::channel(1);
        tokio::spawn(run(options, receiver));
        Checkpointer { commits }
    }

    /// Tells the task that the writer committed.
    pub(in crate::store) fn committed(&self) {
        // A full channel already holds a wake-up for the next checkpoint.
        let _ = self.commits.try_send(());
    }
}

async fn run(options: SqliteConnectOptions, mut commits: mpsc::Receiver<()>) {
    let mut connection: Option<SqliteConnection> = None;
    while commits.recv().await.is_some() {
        tokio::time::sleep(GATHER).await;
        // The commits of the pause are copied by this checkpoint.
        let _ = commits.try_recv();
        let open = match connection.as_mut() {
            Some(open) => open,
            None => match options.connect().await {
                Ok(opened) => connection.insert(opened),
                Err(error) => {
                    debug!(error = %error, "opening the checkpoint connection failed; the writer checkpoints by itself");
                    continue;
                }
            },
        };
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut *open).await {
            debug!(error = %error, "checkpointing the WAL failed; the writer checkpoints by itself");
            if let Some(failed) = connection.take() {
                let _ = failed.close().await;
            }
        }
    }
    if let Some(open) = connection {
        let _ = open.close().await;
    }
}
