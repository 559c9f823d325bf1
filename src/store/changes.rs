//! [`ChangeProbe`]: a cheap way to notice that another connection (another program, or the
//! daemon's own writer) committed to the database, without reading any table. It asks SQLite's
//! `PRAGMA data_version` on one connection kept for that purpose: the value is per connection and
//! changes whenever any other connection commits.

use sqlx::Connection as _;
use sqlx::sqlite::SqliteConnection;

use super::Store;

/// One connection of its own, asking `PRAGMA data_version`. The value read at opening is the
/// baseline; each [`ChangeProbe::changed`] compares with the value read last.
#[derive(Debug)]
pub struct ChangeProbe {
    connection: SqliteConnection,
    last: i64,
}

impl ChangeProbe {
    /// Whether any other connection committed since the probe was opened or last asked. One
    /// `PRAGMA data_version` on an idle connection: no table is read.
    pub async fn changed(&mut self) -> Result<bool, sqlx::Error> {
        let version = data_version(&mut self.connection).await?;
        let changed = version != self.last;
        self.last = version;
        Ok(changed)
    }

    /// Closes the probe's connection.
    pub async fn close(self) -> Result<(), sqlx::Error> {
        self.connection.close().await
    }
}

impl Store {
    /// Opens a [`ChangeProbe`] on a connection of its own (taken out of the read pool for good),
    /// with the current version as its baseline.
    pub async fn change_probe(&self) -> Result<ChangeProbe, sqlx::Error> {
        let mut connection = self.reader.acquire().await?.detach();
        let last = data_version(&mut connection).await?;
        Ok(ChangeProbe { connection, last })
    }
}

async fn data_version(connection: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("PRAGMA data_version").fetch_one(connection).await
}
