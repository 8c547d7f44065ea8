//! How Firebreak opens its databases (feature `db`), the same way in every service: `sqlite://`
//! (created if missing, one connection: SQLite has one writer) or `postgres://`, through sqlx's
//! `Any` driver; then the service's embedded migrations. Services may share one database, each
//! with its own migrations, so a migration another service applied is not an error.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives a crash of the process
//! (what the services' invariants need: offsets after the write, state before the side effect)
//! without an fsync per transaction; a power loss may take the last commits back. Deployments
//! that must survive that use PostgreSQL. The WAL is copied back into the database (checkpointed,
//! the one step that fsyncs) by a task with a connection of its own, every [`CHECKPOINT_EVERY`],
//! not by the commit that happens to fill it: a commit that checkpoints takes 6–8 ms instead of
//! well under one, and the pool's one connection waits for it (the gate's permit p99 doubled).
//! Should that task fall behind, the writer still checkpoints a WAL of [`WAL_PAGES`] pages.

use std::{sync::Arc, time::Duration};

use sqlx::{AnyPool, any::AnyPoolOptions, migrate::Migrator};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{Error, Result};

/// How often a SQLite database's WAL is checkpointed in the background.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The WAL's size, in pages (4 KiB), at which the writer checkpoints it itself (SQLite's default
/// is 1,000): only if the background checkpoints fall behind.
pub const WAL_PAGES: u32 = 10_000;

/// What keeps a SQLite database's background checkpoints going: they stop when the last clone
/// is dropped. Nothing for PostgreSQL.
#[derive(Clone, Default)]
pub struct Checkpoints {
    _stop: Option<Arc<DropGuard>>,
}

/// Opens a pool for `url` (at most `max_connections`, 1 for SQLite) and runs `migrator`; keep
/// the [`Checkpoints`] as long as the pool.
pub async fn open(url: &str, mut migrator: Migrator, max_connections: u32) -> Result<(AnyPool, Checkpoints)> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    let url = if sqlite && !url.contains("mode=") && !url.contains(":memory:") {
        format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
    } else {
        url.to_owned()
    };
    let max = if sqlite { 1 } else { max_connections };
    let mut options = AnyPoolOptions::new().max_connections(max);
    if sqlite {
        options = options.after_connect(|conn, _| {
            Box::pin(async move {
                use sqlx::Executor;
                conn.execute(
                    format!(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
                         PRAGMA wal_autocheckpoint = {WAL_PAGES}"
                    )
                    .as_str(),
                )
                .await?;
                Ok(())
            })
        });
    }
    let pool = options.connect(&url).await.map_err(Error::Database)?;
    migrator.set_ignore_missing(true);
    migrator.run(&pool).await.map_err(Error::Migrate)?;
    if !sqlite {
        let autovacuum: Option<String> = sqlx::query_scalar("SHOW autovacuum").fetch_one(&pool).await.ok();
        if autovacuum.as_deref() == Some("off") {
            tracing::warn!(
                database = %redacted(&url),
                "autovacuum is off on this PostgreSQL server: the rows every update leaves behind are never \
                 reclaimed and the planner's statistics go stale, so writes and queries slow as tables grow"
            );
        }
    }
    tracing::info!(database = %redacted(&url), "database open, migrations applied");
    let checkpoints = if sqlite && !url.contains(":memory:") && !url.contains("mode=memory") {
        let stop = CancellationToken::new();
        tokio::spawn(checkpoint(url, stop.clone()));
        Checkpoints { _stop: Some(Arc::new(stop.drop_guard())) }
    } else {
        Checkpoints::default()
    };
    Ok((pool, checkpoints))
}

/// Checkpoints a SQLite database's WAL every [`CHECKPOINT_EVERY`] on a connection of its own
/// (`PASSIVE`: the writer and the readers go on meanwhile), until `stop`.
async fn checkpoint(url: String, stop: CancellationToken) {
    use sqlx::{Connection, Executor};
    let mut conn: Option<sqlx::AnyConnection> = None;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let done = async {
            let c = match &mut conn {
                Some(c) => c,
                None => {
                    let mut c = sqlx::AnyConnection::connect(&url).await?;
                    c.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.insert(c)
                }
            };
            c.execute("PRAGMA wal_checkpoint(PASSIVE)").await
        };
        if let Err(error) = done.await {
            tracing::warn!(database = %redacted(&url), %error, "checkpointing the WAL failed; the writer checkpoints it when it grows");
            conn = None;
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}

/// A database URL without its password, for logs and errors.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Placeholders for `n` parameters of a statement on `conn`, bound in the order they appear:
/// `$1, $2, …` on PostgreSQL; a bare `?` each on SQLite. SQLite looks a named parameter (`$N`,
/// `?N`) up by a linear scan of the statement's parameters each time sqlx binds one
/// (`sqlite3_bind_parameter_name`), so a multi-row insert of thousands of parameters spent half
/// of the event center's ingest time binding; a bare `?` is bound by its position. On SQLite,
/// every parameter of a statement built with these must be one of them (sqlx numbers bare ones
/// apart from named ones), so a statement takes all its placeholders from one call.
pub fn placeholders(conn: &sqlx::AnyConnection, n: usize) -> Vec<String> {
    if conn.backend_name() == "SQLite" { vec!["?".to_owned(); n] } else { (1..=n).map(|k| format!("${k}")).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What commits write goes to the WAL; the task copies it into the database file within a
    /// period or two, while the writer (whose own checkpoints wait for a WAL of 10,000 pages)
    /// does not.
    #[tokio::test]
    async fn a_sqlite_wal_is_checkpointed_in_the_background() {
        let tmp = tempfile::Builder::new().prefix("fb-wal-").tempdir().unwrap();
        let dir = tmp.path();
        let file = dir.join("x.db");
        let (pool, checkpoints) = open(&format!("sqlite://{}", file.display()), Migrator::DEFAULT, 1).await.unwrap();
        sqlx::query("CREATE TABLE t (v TEXT)").execute(&pool).await.unwrap();
        // Past the first checkpoint of the empty database.
        tokio::time::sleep(CHECKPOINT_EVERY * 2).await;
        let before = std::fs::metadata(&file).unwrap().len();
        let row = "x".repeat(4000);
        for _ in 0..500 {
            sqlx::query("INSERT INTO t (v) VALUES ($1)").bind(&row).execute(&pool).await.unwrap();
        }
        let wal = std::fs::metadata(dir.join("x.db-wal")).unwrap().len();
        assert!(wal > 2_000_000, "the rows are in the WAL: {wal} bytes");
        let mut grown = 0;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            grown = std::fs::metadata(&file).unwrap().len().saturating_sub(before);
            if grown > 2_000_000 {
                break;
            }
        }
        assert!(grown > 2_000_000, "the database file grew by {grown} bytes: the WAL was not checkpointed");
        drop(checkpoints);
        pool.close().await;
    }
}
