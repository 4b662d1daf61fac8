//! The diesel implementation of [`TagStore`](crate::TagStore), on SQLite or PostgreSQL.
//!
//! Each backend is compiled only with its feature (`sqlite`, `postgres`), so the parts of one
//! backend carry `cfg` attributes; the queries are shared.
//!
//! Diesel is blocking, so every call runs on tokio's blocking pool with a pooled connection;
//! the async workers never wait on the database.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
#[cfg(feature = "sqlite")]
use diesel::connection::SimpleConnection;
#[cfg(feature = "postgres")]
use diesel::pg::PgConnection;
use diesel::prelude::*;
#[cfg(feature = "sqlite")]
use diesel::r2d2::CustomizeConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
#[cfg(feature = "sqlite")]
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use pierone_protocol::{Digest, RepoName, Tag, UploadId, UploadPart};

use crate::{
    AuditEntry, AuditKind, AuditLog, BlobUser, Catalog, Checkpoint, Collector, Error, ImageMatch,
    ManifestRecord, Manifests, Millis, NewManifest, OutboxItem, Ping, Quarantine, QuarantineRecord,
    Referrer, ScmSource, TagOutcome, TagRecord, TagWrite, TeamStats, UploadSession, Uploads,
    decide, digest_has_prefix, now_millis,
};

#[cfg(feature = "sqlite")]
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
#[cfg(feature = "postgres")]
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

mod schema {
    diesel::table! {
        repositories (name) {
            name -> Text,
            team -> Text,
            created_at -> BigInt,
        }
    }
    diesel::table! {
        manifests (digest) {
            digest -> Text,
            media_type -> Text,
            body -> Binary,
            subject -> Nullable<Text>,
            artifact_type -> Nullable<Text>,
            config_digest -> Nullable<Text>,
            annotations -> Nullable<Text>,
            created_at -> BigInt,
        }
    }
    diesel::table! {
        repository_manifests (repository, digest) {
            repository -> Text,
            digest -> Text,
            created_at -> BigInt,
        }
    }
    diesel::table! {
        manifest_references (manifest, reference) {
            manifest -> Text,
            reference -> Text,
            size -> BigInt,
        }
    }
    diesel::table! {
        tags (id) {
            id -> BigInt,
            repository -> Text,
            name -> Text,
            digest -> Text,
            created_at -> BigInt,
            created_by -> Text,
        }
    }
    diesel::table! {
        audit_log (seq) {
            seq -> BigInt,
            at -> BigInt,
            principal -> Text,
            realm -> Text,
            repository -> Text,
            tag -> Text,
            digest -> Text,
            previous_digest -> Nullable<Text>,
            prev_hash -> Text,
            hash -> Text,
            kind -> Text,
        }
    }
    diesel::table! {
        audit_head (id) {
            id -> Integer,
            seq -> BigInt,
            hash -> Text,
        }
    }
    diesel::table! {
        audit_checkpoints (size) {
            size -> BigInt,
            head -> Text,
            at -> BigInt,
            public_key -> Text,
            signature -> Text,
            root -> Text,
            frontier -> Text,
        }
    }
    diesel::table! {
        outbox (id) {
            id -> BigInt,
            target -> Text,
            seq -> BigInt,
            created_at -> BigInt,
            attempts -> Integer,
            next_attempt_at -> BigInt,
            locked_until -> BigInt,
            delivered_at -> Nullable<BigInt>,
            last_error -> Nullable<Text>,
        }
    }
    diesel::table! {
        gc_candidates (digest) {
            digest -> Text,
            marked_at -> BigInt,
            state -> Text,
        }
    }
    diesel::table! {
        uploads (id) {
            id -> Text,
            repository -> Text,
            received -> BigInt,
            hash_state -> Binary,
            created_at -> BigInt,
            updated_at -> BigInt,
            owner -> Text,
        }
    }
    diesel::table! {
        upload_parts (upload_id, start) {
            upload_id -> Text,
            start -> BigInt,
            part_key -> Text,
            size -> BigInt,
        }
    }
    diesel::table! {
        quarantined_blobs (digest) {
            digest -> Text,
            at -> BigInt,
            principal -> Text,
            actual -> Text,
        }
    }
    diesel::table! {
        scm_sources (repository, tag) {
            repository -> Text,
            tag -> Text,
            url -> Text,
            revision -> Text,
            author -> Text,
            status -> Text,
            created_at -> BigInt,
        }
    }
    diesel::joinable!(repository_manifests -> manifests (digest));
    diesel::joinable!(tags -> manifests (digest));
    diesel::joinable!(outbox -> audit_log (seq));
    diesel::allow_tables_to_appear_in_same_query!(manifests, repository_manifests, tags);
    diesel::allow_tables_to_appear_in_same_query!(outbox, audit_log);
    diesel::allow_tables_to_appear_in_same_query!(gc_candidates, manifest_references, manifests);
}

use schema::*;

#[cfg(feature = "sqlite")]
#[derive(Debug)]
struct SqlitePragmas;

#[cfg(feature = "sqlite")]
impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // WAL lets readers run beside the one writer; busy_timeout makes writers queue instead
        // of failing; synchronous=FULL because an acknowledged tag is an audit record.
        conn.batch_execute(
            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// One connection pool, for whichever backend the URL chose.
#[derive(Clone)]
enum Pools {
    #[cfg(feature = "sqlite")]
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    #[cfg(feature = "postgres")]
    Postgres(Pool<ConnectionManager<PgConnection>>),
}

/// The metadata store on a SQL database through diesel: SQLite (the embedded default) or
/// PostgreSQL (for several replicas), with the same queries for both.
#[derive(Clone)]
pub struct SqlTagStore {
    pools: Pools,
}

impl std::fmt::Debug for SqlTagStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (backend, state) = match &self.pools {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite(p) => ("sqlite", p.state()),
            #[cfg(feature = "postgres")]
            Pools::Postgres(p) => ("postgres", p.state()),
        };
        f.debug_struct("SqlTagStore")
            .field("backend", &backend)
            .field("connections", &state.connections)
            .finish()
    }
}

/// Run diesel's blocking work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("blocking task failed: {e}")))?
}

/// Run `$body` with `$c` bound to a pooled connection of the store's backend, off the async
/// workers. The body is compiled once per backend, with `ops` naming that backend's module of
/// shared queries.
macro_rules! run {
    ($self:ident, |$c:ident| $body:block) => {
        match $self.pools.clone() {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite(pool) => {
                blocking(move || {
                    #[allow(unused_imports)]
                    use sqlite_ops as ops;
                    let mut conn = pool.get().map_err(|e| Error::Unavailable(e.to_string()))?;
                    let $c: &mut SqliteConnection = &mut conn;
                    $body
                })
                .await
            }
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => {
                blocking(move || {
                    #[allow(unused_imports)]
                    use pg_ops as ops;
                    let mut conn = pool.get().map_err(|e| Error::Unavailable(e.to_string()))?;
                    let $c: &mut PgConnection = &mut conn;
                    $body
                })
                .await
            }
        }
    };
}

/// Inside a transaction: either the database failed or a store rule refused the write.
enum TxError {
    Db(DieselError),
    Store(Error),
}

impl From<DieselError> for TxError {
    fn from(e: DieselError) -> Self {
        TxError::Db(e)
    }
}

fn db_error(e: DieselError) -> Error {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
            Error::Unavailable(info.message().to_owned())
        }
        other => Error::Query(other.to_string()),
    }
}

fn parse_digest(s: &str) -> Result<Digest, Error> {
    s.parse()
        .map_err(|e| Error::Corrupt(format!("stored digest {s:?}: {e}")))
}

impl SqlTagStore {
    /// Open the database at `url`, creating it (SQLite) and applying migrations as needed:
    /// `postgres://...` or `postgresql://...` for PostgreSQL, `sqlite://PATH` or a bare path
    /// for SQLite; any other `SCHEME://` is refused by name rather than taken for a file name.
    /// The backend is chosen from the scheme so that a connection failure reports the real
    /// error.
    pub async fn open(url: &str) -> Result<SqlTagStore, Error> {
        let url = url.to_owned();
        match url_scheme(&url) {
            Some("postgres" | "postgresql") => blocking(move || open_postgres(url)).await,
            Some("sqlite") | None => {
                blocking(move || {
                    open_sqlite(url.strip_prefix("sqlite://").unwrap_or(&url).to_owned())
                })
                .await
            }
            Some(other) => Err(Error::UnsupportedScheme(other.to_owned())),
        }
    }
}

/// The scheme of `SCHEME://...`, `None` for a path. Only what RFC 3986 allows in a scheme
/// counts, so that a path such as `./data://x` stays a path.
fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// How long a PostgreSQL connection attempt may take unless the URL says otherwise: without
/// it, libpq waits for the operating system, minutes for a host that drops packets.
#[cfg(feature = "postgres")]
const PG_CONNECT_TIMEOUT_S: u32 = 10;

/// libpq's message on one line: it spreads one failure over several, with a hint indented
/// below, which would read as separate errors in a log.
#[cfg(feature = "postgres")]
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn unavailable(e: diesel::r2d2::PoolError) -> Error {
    Error::Unavailable(e.to_string())
}

fn migrate(e: Box<dyn std::error::Error + Send + Sync>) -> Error {
    Error::Query(format!("migrations failed: {e}"))
}

#[cfg(feature = "postgres")]
fn open_postgres(mut url: String) -> Result<SqlTagStore, Error> {
    if !url.contains("connect_timeout=") {
        let sep = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{sep}connect_timeout={PG_CONNECT_TIMEOUT_S}");
    }
    // One connection first: the pool would open all of its connections at once and log every
    // failure, several times over, before giving up with the last one. This way an unreachable
    // database is one error, with libpq's reason.
    let mut first = PgConnection::establish(&url)
        .map_err(|e| Error::Unavailable(format!("cannot connect: {}", one_line(&e.to_string()))))?;
    first
        .run_pending_migrations(POSTGRES_MIGRATIONS)
        .map_err(migrate)?;
    drop(first);
    let pool = Pool::builder()
        .max_size(16)
        .connection_timeout(Duration::from_secs(5))
        .build(ConnectionManager::<PgConnection>::new(url))
        .map_err(unavailable)?;
    Ok(SqlTagStore {
        pools: Pools::Postgres(pool),
    })
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(url: String) -> Result<SqlTagStore, Error> {
    Err(Error::Unavailable(format!(
        "{url}: this build has no PostgreSQL support (feature `postgres`)"
    )))
}

#[cfg(feature = "sqlite")]
fn open_sqlite(path: String) -> Result<SqlTagStore, Error> {
    // Switch a new database to WAL once, before the pool opens its connections at
    // the same time: otherwise they race for the switch and log "database is locked".
    SqliteConnection::establish(&path)
        .and_then(|mut c| {
            c.batch_execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL;")
                .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))
        })
        .map_err(|e| Error::Unavailable(format!("{path}: {e}")))?;
    let pool = Pool::builder()
        .max_size(8)
        .connection_timeout(Duration::from_secs(10))
        .connection_customizer(Box::new(SqlitePragmas))
        .build(ConnectionManager::<SqliteConnection>::new(path))
        .map_err(unavailable)?;
    pool.get()
        .map_err(unavailable)?
        .run_pending_migrations(SQLITE_MIGRATIONS)
        .map_err(migrate)?;
    Ok(SqlTagStore {
        pools: Pools::Sqlite(pool),
    })
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(path: String) -> Result<SqlTagStore, Error> {
    Err(Error::Unavailable(format!(
        "{path}: this build has no SQLite support (feature `sqlite`)"
    )))
}

/// The queries, written once and compiled for each backend: `$conn` is the connection type,
/// `$tx` the transaction that serialises writers (SQLite needs `BEGIN IMMEDIATE`, or two
/// readers upgrading to writers deadlock; PostgreSQL's default READ COMMITTED suffices because
/// the unique constraint decides).
macro_rules! backend_ops {
    ($module:ident, $conn:ty, $tx:ident) => {
        mod $module {
            use super::*;

            pub(super) type Conn = $conn;

            /// Run [`put_manifest_tx`] in a transaction.
            pub(super) fn put_manifest_in_tx(
                c: &mut Conn,
                repo: &RepoName,
                m: &NewManifest,
                tag: Option<&TagWrite>,
            ) -> Result<TagOutcome, TxError> {
                c.$tx(|c| put_manifest_tx(c, repo, m, tag))
            }

            pub(super) fn put_manifest_tx(
                c: &mut Conn,
                repo: &RepoName,
                m: &NewManifest,
                tag: Option<&TagWrite>,
            ) -> Result<TagOutcome, TxError> {
                let now = now_millis();
                let digest = m.digest.as_str();
                // Decide the tag first: a refusal must leave nothing behind (the transaction rolls back
                // anyway, but this also spares the writes).
                let outcome = match tag {
                    None => TagOutcome::Untagged,
                    Some(w) => {
                        let existing: Option<(i64, String)> = tags::table
                            .filter(tags::repository.eq(repo.as_str()))
                            .filter(tags::name.eq(w.tag.as_str()))
                            .select((tags::id, tags::digest))
                            .first(c)
                            .optional()?;
                        let current = existing
                            .map(|(_, d)| parse_digest(&d))
                            .transpose()
                            .map_err(TxError::Store)?;
                        // Decided inside the transaction: a writer that inserts the same tag
                        // meanwhile makes our insert violate the unique constraint, and the
                        // retry decides again on its row.
                        decide(w.mutability, current.as_ref(), &m.digest)
                            .into_outcome(repo, &w.tag, &m.digest)
                            .map_err(TxError::Store)?
                    }
                };
                diesel::insert_into(repositories::table)
                    .values((
                        repositories::name.eq(repo.as_str()),
                        repositories::team.eq(repo.team()),
                        repositories::created_at.eq(now),
                    ))
                    .on_conflict_do_nothing()
                    .execute(c)?;
                let inserted = diesel::insert_into(manifests::table)
                    .values((
                        manifests::digest.eq(digest),
                        manifests::media_type.eq(&m.media_type),
                        manifests::body.eq(m.body.as_ref()),
                        manifests::subject.eq(m.subject.as_ref().map(|d| d.as_str())),
                        manifests::artifact_type.eq(m.artifact_type.as_deref()),
                        manifests::config_digest.eq(m.config_digest.as_ref().map(|d| d.as_str())),
                        manifests::annotations.eq(m.annotations.as_deref()),
                        manifests::created_at.eq(now),
                    ))
                    .on_conflict_do_nothing()
                    .execute(c)?;
                if inserted > 0 {
                    let age_ms = now - m.checked_at;
                    if age_ms > crate::MAX_CHECK_AGE_MS {
                        return Err(TxError::Store(Error::StaleCheck { age_ms }));
                    }
                    for (r, _) in &m.references {
                        rescue_from_gc(c, r)?;
                    }
                    for (r, size) in &m.references {
                        diesel::insert_into(manifest_references::table)
                            .values((
                                manifest_references::manifest.eq(digest),
                                manifest_references::reference.eq(r.as_str()),
                                manifest_references::size.eq(*size as i64),
                            ))
                            .on_conflict_do_nothing()
                            .execute(c)?;
                    }
                }
                diesel::insert_into(repository_manifests::table)
                    .values((
                        repository_manifests::repository.eq(repo.as_str()),
                        repository_manifests::digest.eq(digest),
                        repository_manifests::created_at.eq(now),
                    ))
                    .on_conflict_do_nothing()
                    .execute(c)?;
                if let Some(w) = tag {
                    if let Some(src) = &w.scm_source {
                        let row = (
                            scm_sources::repository.eq(repo.as_str()),
                            scm_sources::tag.eq(w.tag.as_str()),
                            scm_sources::url.eq(&src.url),
                            scm_sources::revision.eq(&src.revision),
                            scm_sources::author.eq(&src.author),
                            scm_sources::status.eq(&src.status),
                            scm_sources::created_at.eq(now),
                        );
                        // A re-push of the same content keeps the source recorded first; a moved tag
                        // takes the source of its new content.
                        if outcome == TagOutcome::Unchanged {
                            diesel::insert_into(scm_sources::table)
                                .values(row)
                                .on_conflict_do_nothing()
                                .execute(c)?;
                        } else {
                            diesel::delete(
                                scm_sources::table
                                    .filter(scm_sources::repository.eq(repo.as_str()))
                                    .filter(scm_sources::tag.eq(w.tag.as_str())),
                            )
                            .execute(c)?;
                            diesel::insert_into(scm_sources::table)
                                .values(row)
                                .execute(c)?;
                        }
                    }
                    let previous = match &outcome {
                        TagOutcome::Created => {
                            // The unique (repository, name) constraint decides a race with another writer;
                            // its violation surfaces as a DatabaseError and the caller retries.
                            diesel::insert_into(tags::table)
                                .values((
                                    tags::repository.eq(repo.as_str()),
                                    tags::name.eq(w.tag.as_str()),
                                    tags::digest.eq(digest),
                                    tags::created_at.eq(now),
                                    tags::created_by.eq(&w.principal),
                                ))
                                .execute(c)?;
                            None
                        }
                        TagOutcome::Moved { previous } => {
                            let n = diesel::update(
                                tags::table
                                    .filter(tags::repository.eq(repo.as_str()))
                                    .filter(tags::name.eq(w.tag.as_str()))
                                    .filter(tags::digest.eq(previous.as_str())),
                            )
                            .set((
                                tags::digest.eq(digest),
                                tags::created_at.eq(now),
                                tags::created_by.eq(&w.principal),
                            ))
                            .execute(c)?;
                            if n != 1 {
                                // Someone moved it in between; roll back and let the caller retry.
                                return Err(TxError::Db(DieselError::DatabaseError(
                                    DatabaseErrorKind::SerializationFailure,
                                    Box::new("mutable tag moved concurrently".to_owned()),
                                )));
                            }
                            Some(previous.as_str())
                        }
                        TagOutcome::Unchanged | TagOutcome::Untagged => return Ok(outcome),
                    };
                    append_audit(c, repo, w, digest, previous, now)?;
                }
                Ok(outcome)
            }

            /// Extend the chain by one entry and queue its events.
            fn append_audit(
                c: &mut Conn,
                repo: &RepoName,
                w: &TagWrite,
                digest: &str,
                previous: Option<&str>,
                now: Millis,
            ) -> Result<(), TxError> {
                let e = append_entry(c, |prev| {
                    pierone_protocol::audit::next_entry(
                        Some(prev),
                        now,
                        &w.principal,
                        &w.realm,
                        repo.as_str(),
                        w.tag.as_str(),
                        digest,
                        previous,
                    )
                })?;
                for target in &w.notify {
                    diesel::insert_into(outbox::table)
                        .values((
                            outbox::target.eq(target),
                            outbox::seq.eq(e.seq as i64),
                            outbox::created_at.eq(now),
                            outbox::next_attempt_at.eq(now),
                        ))
                        .execute(c)?;
                }
                Ok(())
            }

            /// Append the entry `make` builds on the current head. The no-op update takes the
            /// head row's lock first, so concurrent appends wait for this transaction.
            fn append_entry(
                c: &mut Conn,
                make: impl FnOnce((u64, &str)) -> AuditEntry,
            ) -> Result<AuditEntry, DieselError> {
                diesel::update(audit_head::table.find(1))
                    .set(audit_head::seq.eq(audit_head::seq))
                    .execute(c)?;
                let (seq, hash): (i64, String) = audit_head::table
                    .find(1)
                    .select((audit_head::seq, audit_head::hash))
                    .first(c)?;
                let e = make((seq as u64, &hash));
                diesel::insert_into(audit_log::table)
                    .values((
                        audit_log::seq.eq(e.seq as i64),
                        audit_log::at.eq(e.at),
                        audit_log::principal.eq(&e.principal),
                        audit_log::realm.eq(&e.realm),
                        audit_log::repository.eq(&e.repository),
                        audit_log::tag.eq(&e.tag),
                        audit_log::digest.eq(&e.digest),
                        audit_log::previous_digest.eq(e.previous_digest.as_deref()),
                        audit_log::prev_hash.eq(&e.prev_hash),
                        audit_log::hash.eq(&e.hash),
                        audit_log::kind.eq(e.kind.as_str()),
                    ))
                    .execute(c)?;
                diesel::update(audit_head::table.find(1))
                    .set((
                        audit_head::seq.eq(e.seq as i64),
                        audit_head::hash.eq(&e.hash),
                    ))
                    .execute(c)?;
                Ok(e)
            }

            /// The quarantine row and its audit entries, in one transaction.
            pub(super) fn record_quarantine_tx(
                c: &mut Conn,
                q: &Quarantine,
            ) -> Result<Vec<AuditEntry>, DieselError> {
                c.$tx(|c| {
                    let r = &q.record;
                    diesel::delete(quarantined_blobs::table.find(r.digest.as_str())).execute(c)?;
                    diesel::insert_into(quarantined_blobs::table)
                        .values((
                            quarantined_blobs::digest.eq(r.digest.as_str()),
                            quarantined_blobs::at.eq(r.at),
                            quarantined_blobs::principal.eq(&r.principal),
                            quarantined_blobs::actual.eq(r.actual.as_str()),
                        ))
                        .execute(c)?;
                    let nobody = [(String::new(), String::new())];
                    let affected = if q.affected.is_empty() {
                        &nobody[..]
                    } else {
                        &q.affected[..]
                    };
                    let mut appended = Vec::new();
                    for (repo, tag) in affected {
                        appended.push(append_entry(c, |prev| {
                            pierone_protocol::audit::next_quarantine_entry(
                                Some(prev),
                                r.at,
                                &r.principal,
                                &q.realm,
                                repo,
                                tag,
                                r.digest.as_str(),
                            )
                        })?);
                    }
                    Ok(appended)
                })
            }

            /// A new manifest references `digest`: take it off the garbage candidates, or
            /// refuse if collection already claimed it. The delete runs before the check so
            /// that, on PostgreSQL, it waits for a concurrent claim's commit and sees its result.
            /// Tombstones included: a blob deleted since the caller checked it is refused too.
            fn rescue_from_gc(c: &mut Conn, digest: &Digest) -> Result<(), TxError> {
                unmark(c, digest.as_str())?;
                let claimed: Option<String> = gc_candidates::table
                    .find(digest.as_str())
                    .select(gc_candidates::state)
                    .first(c)
                    .optional()?;
                if claimed.is_some() {
                    return Err(TxError::Store(Error::BlobCollected(digest.clone())));
                }
                Ok(())
            }

            /// Which of `digests` a manifest is or references.
            pub(super) fn referenced(
                c: &mut Conn,
                digests: &[&str],
            ) -> Result<Vec<String>, DieselError> {
                let mut found: Vec<String> = manifest_references::table
                    .filter(manifest_references::reference.eq_any(digests))
                    .select(manifest_references::reference)
                    .distinct()
                    .load(c)?;
                found.extend(
                    manifests::table
                        .filter(manifests::digest.eq_any(digests))
                        .select(manifests::digest)
                        .load::<String>(c)?,
                );
                found.sort();
                found.dedup();
                Ok(found)
            }

            fn is_referenced(c: &mut Conn, digest: &str) -> Result<bool, DieselError> {
                Ok(!referenced(c, &[digest])?.is_empty())
            }

            /// Drop `digest`'s mark unless a collector has already claimed it.
            pub(super) fn unmark(c: &mut Conn, digest: &str) -> Result<usize, DieselError> {
                diesel::delete(
                    gc_candidates::table
                        .filter(gc_candidates::digest.eq(digest))
                        .filter(gc_candidates::state.eq("marked")),
                )
                .execute(c)
            }

            pub(super) fn gc_mark_tx(
                c: &mut Conn,
                digest: &str,
                now: Millis,
            ) -> Result<Option<Millis>, TxError> {
                c.$tx(|c| {
                    if is_referenced(c, digest)? {
                        unmark(c, digest)?;
                        return Ok(None);
                    }
                    diesel::insert_into(gc_candidates::table)
                        .values((
                            gc_candidates::digest.eq(digest),
                            gc_candidates::marked_at.eq(now),
                            gc_candidates::state.eq("marked"),
                        ))
                        .on_conflict_do_nothing()
                        .execute(c)?;
                    let at: Millis = gc_candidates::table
                        .find(digest)
                        .select(gc_candidates::marked_at)
                        .first(c)?;
                    Ok(Some(at))
                })
            }

            /// The claim is one UPDATE whose condition includes "still unreferenced", so it
            /// is decided atomically against manifest writes (which delete the row first).
            pub(super) fn gc_claim_tx(
                c: &mut Conn,
                digest: &str,
                marked_before: Millis,
                now: Millis,
            ) -> Result<bool, TxError> {
                c.$tx(|c| {
                    if is_referenced(c, digest)? {
                        return Ok(false);
                    }
                    let n = diesel::update(
                        gc_candidates::table
                            .filter(gc_candidates::digest.eq(digest))
                            .filter(gc_candidates::state.eq("marked"))
                            .filter(gc_candidates::marked_at.le(marked_before)),
                    )
                    // From here on marked_at is when it was claimed.
                    .set((
                        gc_candidates::state.eq("deleting"),
                        gc_candidates::marked_at.eq(now),
                    ))
                    .execute(c)?;
                    if n == 1 && is_referenced(c, digest)? {
                        // A manifest committed between the check and the claim.
                        return Err(TxError::Db(DieselError::RollbackTransaction));
                    }
                    Ok(n == 1)
                })
            }

            /// Repositories with at least one tag, sorted.
            pub(super) fn tagged_repositories(c: &mut Conn) -> Result<Vec<String>, Error> {
                tags::table
                    .select(tags::repository)
                    .distinct()
                    .order(tags::repository.asc())
                    .load(c)
                    .map_err(db_error)
            }

            /// Complete tag rows (joined with their manifests) with the sizes of what they reference.
            pub(super) fn tag_records(
                c: &mut Conn,
                rows: Vec<TagRow>,
            ) -> Result<Vec<TagRecord>, Error> {
                let digests: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
                let refs: Vec<(String, i64)> = manifest_references::table
                    .filter(manifest_references::manifest.eq_any(&digests))
                    .select((manifest_references::manifest, manifest_references::size))
                    .load(c)
                    .map_err(db_error)?;
                let mut sizes = std::collections::HashMap::<String, u64>::new();
                for (m, s) in refs {
                    *sizes.entry(m).or_default() += s as u64;
                }
                rows.into_iter()
                    .map(
                        |(name, digest, created_at, created_by, media_type, config, body)| {
                            Ok(TagRecord {
                                size: body.len() as u64 + sizes.get(&digest).copied().unwrap_or(0),
                                name,
                                digest: parse_digest(&digest)?,
                                created_at,
                                created_by,
                                media_type,
                                image: config.as_deref().map(parse_digest).transpose()?,
                            })
                        },
                    )
                    .collect()
            }
        }
    };
}

#[cfg(feature = "sqlite")]
backend_ops!(sqlite_ops, SqliteConnection, immediate_transaction);
#[cfg(feature = "postgres")]
backend_ops!(pg_ops, PgConnection, transaction);

fn is_retryable(e: &DieselError) -> bool {
    matches!(
        e,
        DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::SerializationFailure,
            _
        )
    )
}

type TagRow = (String, String, i64, String, String, Option<String>, Vec<u8>);

/// The columns of a [`TagRow`].
macro_rules! tag_columns {
    () => {
        (
            tags::name,
            tags::digest,
            tags::created_at,
            tags::created_by,
            manifests::media_type,
            manifests::config_digest,
            manifests::body,
        )
    };
}

fn tx_result<T>(r: Result<T, TxError>) -> Result<T, Error> {
    r.map_err(|e| match e {
        TxError::Db(e) => db_error(e),
        TxError::Store(e) => e,
    })
}

type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
);

macro_rules! audit_columns {
    () => {
        (
            audit_log::seq,
            audit_log::at,
            audit_log::principal,
            audit_log::realm,
            audit_log::repository,
            audit_log::tag,
            audit_log::digest,
            audit_log::previous_digest,
            audit_log::prev_hash,
            audit_log::hash,
            audit_log::kind,
        )
    };
}

fn audit_entry(r: AuditRow) -> Result<AuditEntry, Error> {
    let (
        seq,
        at,
        principal,
        realm,
        repository,
        tag,
        digest,
        previous_digest,
        prev_hash,
        hash,
        kind,
    ) = r;
    let kind = AuditKind::parse(&kind)
        .ok_or_else(|| Error::Corrupt(format!("audit entry {seq} has unknown kind {kind:?}")))?;
    Ok(AuditEntry {
        kind,
        seq: seq as u64,
        at,
        principal,
        realm,
        repository,
        tag,
        digest,
        previous_digest,
        prev_hash,
        hash,
    })
}

#[async_trait]
impl Manifests for SqlTagStore {
    async fn put_manifest(
        &self,
        repo: &RepoName,
        manifest: NewManifest,
        tag: Option<TagWrite>,
    ) -> Result<TagOutcome, Error> {
        let repo = repo.clone();
        run!(self, |c| {
            // A lost race is retried: the second attempt sees the winner's row and answers
            // Unchanged or TagImmutable.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let r = ops::put_manifest_in_tx(c, &repo, &manifest, tag.as_ref());
                match r {
                    Ok(o) => return Ok(o),
                    Err(TxError::Store(e)) => return Err(e),
                    Err(TxError::Db(e)) if attempt < 5 && is_retryable(&e) => continue,
                    Err(TxError::Db(e)) => return Err(db_error(e)),
                }
            }
        })
    }

    async fn get_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, Error> {
        let (repo, digest) = (repo.clone(), digest.clone());
        run!(self, |c| {
            let row: Option<(String, Vec<u8>)> = manifests::table
                .inner_join(repository_manifests::table)
                .filter(repository_manifests::repository.eq(repo.as_str()))
                .filter(manifests::digest.eq(digest.as_str()))
                .select((manifests::media_type, manifests::body))
                .first(c)
                .optional()
                .map_err(db_error)?;
            Ok(row.map(|(media_type, body)| ManifestRecord {
                digest,
                media_type,
                body: Bytes::from(body),
            }))
        })
    }

    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, Error> {
        let (repo, tag) = (repo.clone(), tag.clone());
        run!(self, |c| {
            let d: Option<String> = tags::table
                .filter(tags::repository.eq(repo.as_str()))
                .filter(tags::name.eq(tag.as_str()))
                .select(tags::digest)
                .first(c)
                .optional()
                .map_err(db_error)?;
            d.as_deref().map(parse_digest).transpose()
        })
    }

    async fn latest_tag(&self, repo: &RepoName) -> Result<Option<TagRecord>, Error> {
        let repo = repo.clone();
        run!(self, |c| {
            let row: Option<TagRow> = tags::table
                .inner_join(manifests::table)
                .filter(tags::repository.eq(repo.as_str()))
                .order((tags::created_at.desc(), tags::id.desc()))
                .select(tag_columns!())
                .first(c)
                .optional()
                .map_err(db_error)?;
            Ok(ops::tag_records(c, row.into_iter().collect())?.pop())
        })
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<String>>, Error> {
        let repo = repo.clone();
        let last = last.map(str::to_owned);
        run!(self, |c| {
            let exists: Option<String> = repositories::table
                .filter(repositories::name.eq(repo.as_str()))
                .select(repositories::name)
                .first(c)
                .optional()
                .map_err(db_error)?;
            if exists.is_none() {
                return Ok(None);
            }
            let mut q = tags::table
                .filter(tags::repository.eq(repo.as_str()))
                .select(tags::name)
                .order(tags::name.asc())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .into_boxed();
            if let Some(l) = last {
                q = q.filter(tags::name.gt(l));
            }
            q.load(c).map(Some).map_err(db_error)
        })
    }

    async fn tag_records(&self, repo: &RepoName) -> Result<Vec<TagRecord>, Error> {
        let repo = repo.clone();
        run!(self, |c| {
            let rows: Vec<TagRow> = tags::table
                .inner_join(manifests::table)
                .filter(tags::repository.eq(repo.as_str()))
                .order((tags::created_at.asc(), tags::id.asc()))
                .select(tag_columns!())
                .load(c)
                .map_err(db_error)?;
            ops::tag_records(c, rows)
        })
    }

    async fn list_repositories(
        &self,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        let last = last.map(str::to_owned);
        run!(self, |c| {
            let mut q = repositories::table
                .select(repositories::name)
                .order(repositories::name.asc())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .into_boxed();
            if let Some(l) = last {
                q = q.filter(repositories::name.gt(l));
            }
            q.load(c).map_err(db_error)
        })
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Referrer>, Error> {
        let (repo, subject) = (repo.clone(), subject.clone());
        run!(self, |c| {
            type Row = (String, String, Vec<u8>, Option<String>, Option<String>);
            let rows: Vec<Row> = manifests::table
                .inner_join(repository_manifests::table)
                .filter(repository_manifests::repository.eq(repo.as_str()))
                .filter(manifests::subject.eq(subject.as_str()))
                .order(manifests::digest.asc())
                .select((
                    manifests::digest,
                    manifests::media_type,
                    manifests::body,
                    manifests::artifact_type,
                    manifests::annotations,
                ))
                .load(c)
                .map_err(db_error)?;
            rows.into_iter()
                .map(|(d, media_type, body, artifact_type, annotations)| {
                    Ok(Referrer {
                        digest: parse_digest(&d)?,
                        media_type,
                        size: body.len() as u64,
                        artifact_type,
                        annotations,
                    })
                })
                .collect()
        })
    }

    async fn scm_source(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(ScmSource, Millis)>, Error> {
        let (repo, tag) = (repo.clone(), tag.clone());
        run!(self, |c| {
            let row: Option<(String, String, String, String, i64)> = scm_sources::table
                .filter(scm_sources::repository.eq(repo.as_str()))
                .filter(scm_sources::tag.eq(tag.as_str()))
                .select((
                    scm_sources::url,
                    scm_sources::revision,
                    scm_sources::author,
                    scm_sources::status,
                    scm_sources::created_at,
                ))
                .first(c)
                .optional()
                .map_err(db_error)?;
            Ok(row.map(|(url, revision, author, status, at)| {
                (
                    ScmSource {
                        url,
                        revision,
                        author,
                        status,
                    },
                    at,
                )
            }))
        })
    }

    async fn record_scm_source(
        &self,
        repo: &RepoName,
        tag: &Tag,
        source: ScmSource,
    ) -> Result<(), Error> {
        let (repo, tag) = (repo.clone(), tag.clone());
        run!(self, |c| {
            diesel::insert_into(scm_sources::table)
                .values((
                    scm_sources::repository.eq(repo.as_str()),
                    scm_sources::tag.eq(tag.as_str()),
                    scm_sources::url.eq(&source.url),
                    scm_sources::revision.eq(&source.revision),
                    scm_sources::author.eq(&source.author),
                    scm_sources::status.eq(&source.status),
                    scm_sources::created_at.eq(now_millis()),
                ))
                .on_conflict_do_nothing()
                .execute(c)
                .map(drop)
                .map_err(db_error)
        })
    }
}

#[async_trait]
impl Catalog for SqlTagStore {
    async fn teams(&self) -> Result<Vec<String>, Error> {
        run!(self, |c| {
            let repos = ops::tagged_repositories(c)?;
            let mut teams: Vec<String> = repos
                .iter()
                .filter_map(|r| r.split_once('/').map(|(t, _)| t.to_owned()))
                .collect();
            teams.dedup();
            Ok(teams)
        })
    }

    async fn artifacts(&self, team: &str) -> Result<Vec<String>, Error> {
        let team = team.to_owned();
        run!(self, |c| {
            let prefix = format!("{team}/");
            Ok(ops::tagged_repositories(c)?
                .into_iter()
                .filter_map(|r| r.strip_prefix(&prefix).map(str::to_owned))
                .collect())
        })
    }

    async fn find_images(&self, prefix: &str) -> Result<Vec<ImageMatch>, Error> {
        let prefix = prefix.to_owned();
        run!(self, |c| {
            // Digests are hex, so a prefix is matched in SQL on both spellings and then
            // checked exactly.
            let full = if prefix.contains(':') {
                prefix.clone()
            } else {
                format!("sha256:{prefix}")
            };
            let like = format!("{}%", full.replace(['%', '_'], ""));
            let rows: Vec<(String, String, String, Option<String>)> = tags::table
                .inner_join(manifests::table)
                .filter(
                    tags::digest
                        .like(&like)
                        .or(manifests::config_digest.like(&like)),
                )
                .select((
                    tags::repository,
                    tags::name,
                    tags::digest,
                    manifests::config_digest,
                ))
                .order((tags::repository.asc(), tags::name.asc()))
                .load(c)
                .map_err(db_error)?;
            let mut out = Vec::new();
            for (repository, tag, digest, image) in rows {
                let digest = parse_digest(&digest)?;
                let image = image.as_deref().map(parse_digest).transpose()?;
                if digest_has_prefix(&digest, &prefix)
                    || image
                        .as_ref()
                        .is_some_and(|i| digest_has_prefix(i, &prefix))
                {
                    out.push(ImageMatch {
                        repository,
                        tag,
                        digest,
                        image,
                    });
                }
            }
            Ok(out)
        })
    }

    async fn team_stats(&self) -> Result<Vec<TeamStats>, Error> {
        run!(self, |c| {
            let repos: Vec<String> = tags::table
                .select(tags::repository)
                .order(tags::repository.asc())
                .load(c)
                .map_err(db_error)?;
            let mut out: Vec<TeamStats> = Vec::new();
            let mut last_repo: Option<String> = None;
            for repo in repos {
                let Some((team, _)) = repo.split_once('/') else {
                    continue;
                };
                if out.last().is_none_or(|t| t.team != team) {
                    out.push(TeamStats {
                        team: team.to_owned(),
                        artifacts: 0,
                        tags: 0,
                    });
                }
                if let Some(t) = out.last_mut() {
                    t.tags += 1;
                    if last_repo.as_deref() != Some(repo.as_str()) {
                        t.artifacts += 1;
                    }
                }
                last_repo = Some(repo);
            }
            Ok(out)
        })
    }

    async fn storage_bytes(&self) -> Result<u64, Error> {
        run!(self, |c| {
            let manifests: Vec<(String, Vec<u8>)> = manifests::table
                .select((manifests::digest, manifests::body))
                .load(c)
                .map_err(db_error)?;
            let refs: Vec<(String, i64)> = manifest_references::table
                .select((manifest_references::reference, manifest_references::size))
                .distinct()
                .load(c)
                .map_err(db_error)?;
            let known: std::collections::HashSet<&str> =
                manifests.iter().map(|(d, _)| d.as_str()).collect();
            let mut blobs = std::collections::HashMap::<&str, i64>::new();
            for (d, s) in &refs {
                if !known.contains(d.as_str()) {
                    blobs.insert(d.as_str(), *s);
                }
            }
            Ok(manifests.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
                + blobs.values().map(|s| *s as u64).sum::<u64>())
        })
    }
}

#[async_trait]
impl Uploads for SqlTagStore {
    async fn create_upload(&self, s: UploadSession) -> Result<(), Error> {
        run!(self, |c| {
            c.transaction(|c| {
                diesel::insert_into(uploads::table)
                    .values((
                        uploads::id.eq(s.id.as_str()),
                        uploads::repository.eq(s.repo.as_str()),
                        uploads::owner.eq(&s.owner),
                        uploads::received.eq(s.received as i64),
                        uploads::hash_state.eq(&s.hash_state),
                        uploads::created_at.eq(s.created_at),
                        uploads::updated_at.eq(s.updated_at),
                    ))
                    .execute(c)?;
                let mut start = 0i64;
                for p in &s.parts {
                    diesel::insert_into(upload_parts::table)
                        .values((
                            upload_parts::upload_id.eq(s.id.as_str()),
                            upload_parts::start.eq(start),
                            upload_parts::part_key.eq(&p.key),
                            upload_parts::size.eq(p.len as i64),
                        ))
                        .execute(c)?;
                    start += p.len as i64;
                }
                Ok::<(), DieselError>(())
            })
            .map_err(db_error)
        })
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadSession>, Error> {
        let id = id.clone();
        run!(self, |c| {
            type Row = (String, String, i64, Vec<u8>, i64, i64);
            let row: Option<Row> = uploads::table
                .find(id.as_str())
                .select((
                    uploads::repository,
                    uploads::owner,
                    uploads::received,
                    uploads::hash_state,
                    uploads::created_at,
                    uploads::updated_at,
                ))
                .first(c)
                .optional()
                .map_err(db_error)?;
            let Some((repo, owner, received, hash_state, created_at, updated_at)) = row else {
                return Ok(None);
            };
            // Parts are written once and keyed by where they start, so those below the offset
            // read above are exactly the ones recorded with it, whatever happened since.
            let parts: Vec<(String, i64)> = upload_parts::table
                .filter(upload_parts::upload_id.eq(id.as_str()))
                .filter(upload_parts::start.lt(received))
                .order(upload_parts::start.asc())
                .select((upload_parts::part_key, upload_parts::size))
                .load(c)
                .map_err(db_error)?;
            Ok(Some(UploadSession {
                repo: repo
                    .parse()
                    .map_err(|e| Error::Corrupt(format!("upload repository: {e}")))?,
                id: id.clone(),
                owner,
                received: received as u64,
                parts: parts
                    .into_iter()
                    .map(|(key, len)| UploadPart {
                        key,
                        len: len as u64,
                    })
                    .collect(),
                hash_state,
                created_at,
                updated_at,
            }))
        })
    }

    async fn advance_upload(
        &self,
        id: &UploadId,
        expected: u64,
        part: Option<UploadPart>,
        hash_state: Vec<u8>,
    ) -> Result<(), Error> {
        let id = id.clone();
        let received = match &part {
            Some(p) => expected
                .checked_add(p.len)
                .filter(|r| i64::try_from(*r).is_ok())
                .ok_or_else(|| Error::Corrupt("upload size overflows".into()))?,
            None => expected,
        };
        run!(self, |c| {
            let n = c
                .transaction(|c| {
                    let n = diesel::update(
                        uploads::table
                            .filter(uploads::id.eq(id.as_str()))
                            .filter(uploads::received.eq(expected as i64)),
                    )
                    .set((
                        uploads::received.eq(received as i64),
                        uploads::hash_state.eq(&hash_state),
                        uploads::updated_at.eq(now_millis()),
                    ))
                    .execute(c)?;
                    // The part goes in with the offset that counts it, or not at all.
                    if n == 1
                        && let Some(p) = &part
                    {
                        diesel::insert_into(upload_parts::table)
                            .values((
                                upload_parts::upload_id.eq(id.as_str()),
                                upload_parts::start.eq(expected as i64),
                                upload_parts::part_key.eq(&p.key),
                                upload_parts::size.eq(p.len as i64),
                            ))
                            .execute(c)?;
                    }
                    Ok::<usize, DieselError>(n)
                })
                .map_err(db_error)?;
            if n == 1 {
                return Ok(());
            }
            let actual: Option<i64> = uploads::table
                .find(id.as_str())
                .select(uploads::received)
                .first(c)
                .optional()
                .map_err(db_error)?;
            Err(match actual {
                None => Error::UploadUnknown(id),
                Some(a) => Error::UploadOffsetConflict {
                    id,
                    expected,
                    actual: a as u64,
                },
            })
        })
    }

    async fn delete_upload(&self, id: &UploadId) -> Result<bool, Error> {
        let id = id.clone();
        run!(self, |c| {
            c.transaction(|c| {
                diesel::delete(upload_parts::table.filter(upload_parts::upload_id.eq(id.as_str())))
                    .execute(c)?;
                diesel::delete(uploads::table.find(id.as_str()))
                    .execute(c)
                    .map(|n| n > 0)
            })
            .map_err(db_error)
        })
    }

    async fn expired_uploads(
        &self,
        idle_before: Millis,
        limit: usize,
    ) -> Result<Vec<UploadSession>, Error> {
        run!(self, |c| {
            type Row = (String, String, String, i64, Vec<u8>, i64, i64);
            let rows: Vec<Row> = uploads::table
                .filter(uploads::updated_at.lt(idle_before))
                .order(uploads::updated_at.asc())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select((
                    uploads::id,
                    uploads::repository,
                    uploads::owner,
                    uploads::received,
                    uploads::hash_state,
                    uploads::created_at,
                    uploads::updated_at,
                ))
                .load(c)
                .map_err(db_error)?;
            // Expiry only needs to know which uploads to drop, not their parts.
            rows.into_iter()
                .map(
                    |(id, repo, owner, received, hash_state, created_at, updated_at)| {
                        Ok(UploadSession {
                            id: id
                                .parse()
                                .map_err(|e| Error::Corrupt(format!("upload id: {e}")))?,
                            repo: repo
                                .parse()
                                .map_err(|e| Error::Corrupt(format!("upload repository: {e}")))?,
                            owner,
                            received: received as u64,
                            parts: Vec::new(),
                            hash_state,
                            created_at,
                            updated_at,
                        })
                    },
                )
                .collect()
        })
    }
}

#[async_trait]
impl AuditLog for SqlTagStore {
    async fn audit_entries(
        &self,
        since: u64,
        limit: usize,
        tag: Option<(&RepoName, &Tag)>,
    ) -> Result<Vec<AuditEntry>, Error> {
        let tag = tag.map(|(r, t)| (r.as_str().to_owned(), t.as_str().to_owned()));
        run!(self, |c| {
            let mut q = audit_log::table
                .filter(audit_log::seq.gt(since as i64))
                .order(audit_log::seq.asc())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select(audit_columns!())
                .into_boxed();
            if let Some((r, t)) = tag {
                q = q
                    .filter(audit_log::repository.eq(r))
                    .filter(audit_log::tag.eq(t));
            }
            let rows: Vec<AuditRow> = q.load(c).map_err(db_error)?;
            rows.into_iter().map(audit_entry).collect()
        })
    }

    async fn audit_head(&self) -> Result<(u64, String), Error> {
        run!(self, |c| {
            let (seq, hash): (i64, String) = audit_head::table
                .find(1)
                .select((audit_head::seq, audit_head::hash))
                .first(c)
                .map_err(db_error)?;
            Ok((seq as u64, hash))
        })
    }

    async fn put_checkpoint(&self, cp: Checkpoint) -> Result<(), Error> {
        run!(self, |c| {
            diesel::insert_into(audit_checkpoints::table)
                .values((
                    audit_checkpoints::size.eq(cp.size as i64),
                    audit_checkpoints::head.eq(&cp.head),
                    audit_checkpoints::at.eq(cp.at),
                    audit_checkpoints::public_key.eq(&cp.public_key),
                    audit_checkpoints::signature.eq(&cp.signature),
                    audit_checkpoints::root.eq(&cp.root),
                    audit_checkpoints::frontier.eq(cp.frontier.join(" ")),
                ))
                .on_conflict_do_nothing()
                .execute(c)
                .map(drop)
                .map_err(db_error)
        })
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, Error> {
        run!(self, |c| {
            type Row = (i64, String, i64, String, String, String, String);
            let row: Option<Row> = audit_checkpoints::table
                .order(audit_checkpoints::size.desc())
                .select((
                    audit_checkpoints::size,
                    audit_checkpoints::head,
                    audit_checkpoints::at,
                    audit_checkpoints::public_key,
                    audit_checkpoints::signature,
                    audit_checkpoints::root,
                    audit_checkpoints::frontier,
                ))
                .first(c)
                .optional()
                .map_err(db_error)?;
            Ok(row.map(
                |(size, head, at, public_key, signature, root, frontier)| Checkpoint {
                    size: size as u64,
                    head,
                    root,
                    at,
                    public_key,
                    signature,
                    frontier: frontier.split_whitespace().map(str::to_owned).collect(),
                },
            ))
        })
    }

    async fn claim_outbox(
        &self,
        now: Millis,
        limit: usize,
        lease_ms: i64,
        targets: &[String],
    ) -> Result<Vec<OutboxItem>, Error> {
        let targets = targets.to_vec();
        run!(self, |c| {
            let due: Vec<i64> = outbox::table
                .filter(outbox::delivered_at.is_null())
                .filter(outbox::target.eq_any(&targets))
                .filter(outbox::next_attempt_at.le(now))
                .filter(outbox::locked_until.le(now))
                .order(outbox::id.asc())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select(outbox::id)
                .load(c)
                .map_err(db_error)?;
            let mut claimed = Vec::new();
            for id in due {
                // Compare-and-set on the lease: of two replicas, one updates the row.
                let n = diesel::update(
                    outbox::table
                        .find(id)
                        .filter(outbox::delivered_at.is_null())
                        .filter(outbox::locked_until.le(now)),
                )
                .set(outbox::locked_until.eq(now + lease_ms))
                .execute(c)
                .map_err(db_error)?;
                if n == 1 {
                    claimed.push(id);
                }
            }
            let rows: Vec<(i64, String, i32, AuditRow)> = outbox::table
                .inner_join(audit_log::table)
                .filter(outbox::id.eq_any(&claimed))
                .order(outbox::id.asc())
                .select((
                    outbox::id,
                    outbox::target,
                    outbox::attempts,
                    audit_columns!(),
                ))
                .load(c)
                .map_err(db_error)?;
            rows.into_iter()
                .map(|(id, target, attempts, e)| {
                    Ok(OutboxItem {
                        id,
                        target,
                        attempts: attempts.max(0) as u32,
                        entry: audit_entry(e)?,
                    })
                })
                .collect()
        })
    }

    async fn outbox_delivered(&self, id: i64, now: Millis) -> Result<(), Error> {
        run!(self, |c| {
            diesel::update(outbox::table.find(id))
                .set((
                    outbox::delivered_at.eq(Some(now)),
                    outbox::last_error.eq(None::<String>),
                ))
                .execute(c)
                .map(drop)
                .map_err(db_error)
        })
    }

    async fn outbox_retry(
        &self,
        id: i64,
        next_attempt_at: Millis,
        error: &str,
    ) -> Result<(), Error> {
        let error = error.to_owned();
        run!(self, |c| {
            diesel::update(outbox::table.find(id))
                .set((
                    outbox::attempts.eq(outbox::attempts + 1),
                    outbox::next_attempt_at.eq(next_attempt_at),
                    outbox::locked_until.eq(0),
                    outbox::last_error.eq(Some(&error)),
                ))
                .execute(c)
                .map(drop)
                .map_err(db_error)
        })
    }

    async fn outbox_pending(&self) -> Result<u64, Error> {
        run!(self, |c| {
            outbox::table
                .filter(outbox::delivered_at.is_null())
                .count()
                .get_result::<i64>(c)
                .map(|n| n as u64)
                .map_err(db_error)
        })
    }

    async fn outbox_prune(&self, delivered_before: Millis) -> Result<u64, Error> {
        run!(self, |c| {
            diesel::delete(outbox::table.filter(outbox::delivered_at.lt(delivered_before)))
                .execute(c)
                .map(|n| n as u64)
                .map_err(db_error)
        })
    }
}

#[async_trait]
impl Collector for SqlTagStore {
    async fn referenced(&self, digests: &[Digest]) -> Result<Vec<Digest>, Error> {
        let wanted: Vec<String> = digests.iter().map(|d| d.as_str().to_owned()).collect();
        run!(self, |c| {
            let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
            ops::referenced(c, &wanted)
                .map_err(db_error)?
                .iter()
                .map(|d| parse_digest(d))
                .collect()
        })
    }

    async fn gc_mark(&self, digest: &Digest, now: Millis) -> Result<Option<Millis>, Error> {
        let digest = digest.clone();
        run!(self, |c| {
            tx_result(ops::gc_mark_tx(c, digest.as_str(), now))
        })
    }

    async fn gc_claim(
        &self,
        digest: &Digest,
        marked_before: Millis,
        now: Millis,
    ) -> Result<bool, Error> {
        let digest = digest.clone();
        run!(self, |c| {
            match ops::gc_claim_tx(c, digest.as_str(), marked_before, now) {
                Err(TxError::Db(DieselError::RollbackTransaction)) => Ok(false),
                other => tx_result(other),
            }
        })
    }

    async fn gc_stale_claims(&self, claimed_before: Millis) -> Result<Vec<Digest>, Error> {
        run!(self, |c| {
            let rows: Vec<String> = gc_candidates::table
                .filter(gc_candidates::state.eq("deleting"))
                .filter(gc_candidates::marked_at.lt(claimed_before))
                .select(gc_candidates::digest)
                .load(c)
                .map_err(db_error)?;
            rows.iter().map(|d| parse_digest(d)).collect()
        })
    }

    async fn gc_deleted(&self, digest: &Digest, now: Millis) -> Result<(), Error> {
        let digest = digest.clone();
        run!(self, |c| {
            diesel::insert_into(gc_candidates::table)
                .values((
                    gc_candidates::digest.eq(digest.as_str()),
                    gc_candidates::marked_at.eq(now),
                    gc_candidates::state.eq("deleted"),
                ))
                .on_conflict(gc_candidates::digest)
                .do_update()
                .set((
                    gc_candidates::marked_at.eq(now),
                    gc_candidates::state.eq("deleted"),
                ))
                .execute(c)
                .map(drop)
                .map_err(db_error)
        })
    }

    async fn gc_prune(&self, deleted_before: Millis) -> Result<u64, Error> {
        run!(self, |c| {
            diesel::delete(
                gc_candidates::table
                    .filter(gc_candidates::state.eq("deleted"))
                    .filter(gc_candidates::marked_at.lt(deleted_before)),
            )
            .execute(c)
            .map(|n| n as u64)
            .map_err(db_error)
        })
    }

    async fn gc_unmark(&self, digest: &Digest, stored_again: bool) -> Result<(), Error> {
        let digest = digest.clone();
        let states: &'static [&'static str] = if stored_again {
            &["marked", "deleted"]
        } else {
            &["marked"]
        };
        run!(self, |c| {
            // Stored again: neither a mark nor a tombstone applies any more; a claim does,
            // since its collector may be deleting right now.
            diesel::delete(
                gc_candidates::table
                    .filter(gc_candidates::digest.eq(digest.as_str()))
                    .filter(gc_candidates::state.eq_any(states)),
            )
            .execute(c)
            .map(drop)
            .map_err(db_error)
        })
    }

    async fn blob_users(&self, digest: &Digest) -> Result<Vec<BlobUser>, Error> {
        let digest = digest.clone();
        run!(self, |c| {
            let manifests: Vec<String> = manifest_references::table
                .filter(manifest_references::reference.eq(digest.as_str()))
                .select(manifest_references::manifest)
                .load(c)
                .map_err(db_error)?;
            let links: Vec<(String, String)> = repository_manifests::table
                .filter(repository_manifests::digest.eq_any(&manifests))
                .order((
                    repository_manifests::digest.asc(),
                    repository_manifests::repository.asc(),
                ))
                .select((
                    repository_manifests::digest,
                    repository_manifests::repository,
                ))
                .load(c)
                .map_err(db_error)?;
            let tagged: Vec<(String, String, String)> = tags::table
                .filter(tags::digest.eq_any(&manifests))
                .order(tags::name.asc())
                .select((tags::digest, tags::repository, tags::name))
                .load(c)
                .map_err(db_error)?;
            links
                .into_iter()
                .map(|(manifest, repository)| {
                    let tags = tagged
                        .iter()
                        .filter(|(d, r, _)| *d == manifest && *r == repository)
                        .map(|(_, _, t)| t.clone())
                        .collect();
                    Ok(BlobUser {
                        manifest: parse_digest(&manifest)?,
                        repository,
                        tags,
                    })
                })
                .collect()
        })
    }

    async fn record_quarantine(&self, q: Quarantine) -> Result<Vec<AuditEntry>, Error> {
        run!(self, |c| {
            ops::record_quarantine_tx(c, &q).map_err(db_error)
        })
    }

    async fn quarantine_record(&self, digest: &Digest) -> Result<Option<QuarantineRecord>, Error> {
        let digest = digest.clone();
        run!(self, |c| {
            let row: Option<(i64, String, String)> = quarantined_blobs::table
                .find(digest.as_str())
                .select((
                    quarantined_blobs::at,
                    quarantined_blobs::principal,
                    quarantined_blobs::actual,
                ))
                .first(c)
                .optional()
                .map_err(db_error)?;
            row.map(|(at, principal, actual)| {
                Ok(QuarantineRecord {
                    digest,
                    at,
                    principal,
                    actual: parse_digest(&actual)?,
                })
            })
            .transpose()
        })
    }

    async fn release_quarantine(&self, digest: &Digest) -> Result<bool, Error> {
        let digest = digest.clone();
        run!(self, |c| {
            diesel::delete(quarantined_blobs::table.find(digest.as_str()))
                .execute(c)
                .map(|n| n > 0)
                .map_err(db_error)
        })
    }
}

#[async_trait]
impl Ping for SqlTagStore {
    async fn ping(&self) -> Result<(), Error> {
        run!(self, |c| {
            diesel::sql_query("SELECT 1")
                .execute(c)
                .map(drop)
                .map_err(|e| Error::Unavailable(e.to_string()))
        })
    }
}

/// A fresh, empty database on the PostgreSQL server at `base_url` (whose path names an
/// existing database to connect to), for tests: every test gets its own.
#[cfg(all(feature = "postgres", any(test, feature = "conformance")))]
pub async fn create_test_database(base_url: &str) -> Result<String, Error> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("pierone_test_{}_{nanos}_{n}", std::process::id());
    let base = base_url.to_owned();
    blocking(move || {
        let mut conn = PgConnection::establish(&base)
            .map_err(|e| Error::Unavailable(format!("{base}: {e}")))?;
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .map_err(db_error)?;
        let server = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
        Ok(format!("{server}/{name}"))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sqlite")]
    mod sqlite {
        use super::*;

        conformance_tests!(async {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("meta.db").display());
            (SqlTagStore::open(&url).await.unwrap(), dir)
        });
    }

    #[cfg(feature = "postgres")]
    mod postgres {
        use super::*;

        conformance_tests!(async {
            let base = std::env::var("PIERONE_TEST_POSTGRES_URL").expect(
                "PIERONE_TEST_POSTGRES_URL must name a PostgreSQL server; tests/run.sh starts one",
            );
            let url = create_test_database(&base).await.unwrap();
            (SqlTagStore::open(&url).await.unwrap(), ())
        });

        #[tokio::test]
        async fn an_unreachable_server_is_one_error_line() {
            // Port 1 on the loopback: refused at once, and nothing listens there.
            let e = SqlTagStore::open("postgres://pierone:SECRET@127.0.0.1:1/pierone")
                .await
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                "the metadata database is unavailable: cannot connect: connection to server at \"127.0.0.1\", port 1 failed: Connection refused; Is the server running on that host and accepting TCP/IP connections?"
            );
        }
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused_by_name() {
        let e = SqlTagStore::open("mysql://root:SECRET@db.example/pierone")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unsupported database URL scheme mysql: use postgres://, postgresql:// or sqlite://"
        );
    }

    #[test]
    fn schemes_are_told_from_paths() {
        assert_eq!(url_scheme("postgres://u@h/db"), Some("postgres"));
        assert_eq!(url_scheme("sqlite:///var/lib/p.db"), Some("sqlite"));
        assert_eq!(url_scheme("my+sql.x-y://h"), Some("my+sql.x-y"));
        assert_eq!(url_scheme("/var/lib/pierone.db"), None);
        assert_eq!(url_scheme("./data://x"), None);
        assert_eq!(url_scheme("://x"), None);
        assert_eq!(url_scheme("1db://x"), None);
    }
}
