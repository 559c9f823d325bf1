//! Noticing commits by other connections on SQLite: `PRAGMA data_version` on one connection kept
//! for that purpose. The value is per connection and changes whenever any other connection
//! commits, so no table is read.

use sqlx::Connection as _;
use sqlx::sqlite::SqliteConnection;

use super::SqliteStore;

/// One connection of its own, asking `PRAGMA data_version`. The value read at opening is the
/// baseline; each [`DataVersion::changed`] compares with the value read last.
#[derive(Debug)]
pub(in crate::store) struct DataVersion {
    connection: SqliteConnection,
    last: i64,
}

impl DataVersion {
    /// Whether any other connection committed since the probe was opened or last asked.
    pub(in crate::store) async fn changed(&mut self) -> Result<bool, sqlx::Error> {
        let version = data_version(&mut self.connection).await?;
        let changed = version != self.last;
        self.last = version;
        Ok(changed)
    }

    /// Closes the probe's connection.
    pub(in crate::store) async fn close(self) -> Result<(), sqlx::Error> {
        self.connection.close().await
    }
}

impl SqliteStore {
    /// Opens a [`DataVersion`] probe on a connection of its own (taken out of the read pool for
    /// good), with the current version as its baseline.
    pub(in crate::store) async fn change_probe(&self) -> Result<DataVersion, sqlx::Error> {
        let mut connection = self.reader.acquire().await?.detach();
        let last = data_version(&mut connection).await?;
        Ok(DataVersion { connection, last })
    }
}

async fn data_version(connection: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("PRAGMA data_version").fetch_one(connection).await
}
