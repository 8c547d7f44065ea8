//! How Firebreak opens its databases (feature `db`), the same way in every service: `sqlite://`
//! (created if missing, one connection: SQLite has one writer) or `postgres://`, through sqlx's
//! `Any` driver; then the service's embedded migrations. Services may share one database, each
//! with its own migrations, so a migration another service applied is not an error.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives a crash of the process
//! (what the services' invariants need: offsets after the write, state before the side effect)
//! without an fsync per transaction; a power loss may take the last commits back. Deployments
//! that must survive that use PostgreSQL.

use sqlx::{AnyPool, any::AnyPoolOptions, migrate::Migrator};

use crate::{Error, Result};

/// Opens a pool for `url` (at most `max_connections`, 1 for SQLite) and runs `migrator`.
pub async fn open(url: &str, mut migrator: Migrator, max_connections: u32) -> Result<AnyPool> {
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
                conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000")
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
    Ok(pool)
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
