//! upkeep's state in one SQLite database (`<state_dir>/state.db`, WAL, `synchronous=FULL`):
//! installed updates with the record they were installed from, the paths each one owns,
//! hidden updates, accepted EULAs, history, the pending reboot, and the journal of install
//! transactions.
//!
//! Every write is one SQLite transaction, so a crash leaves the previous or the new state.
//! The journal's durability rules (design decision 5): a batch of journal entries is
//! committed before any change it describes is made; a transaction is marked committed only
//! after the install root was flushed, in the same SQLite transaction that records what is
//! installed and who owns which path ([`Store::commit`]), so state and files always agree
//! after recovery.
//!
//! The schema has a version (`PRAGMA user_version`, [`SCHEMA_VERSION`]): opening a database
//! written by an older agent migrates it in one transaction; a database written by a newer
//! agent is refused with [`StoreError::TooNew`].

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use upkeep_types::{HResult, OperationResultCode, UpdateOperation, UpdateRecord};

/// A state database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state database {path}: {cause}")]
    Sqlite {
        /// The database file.
        path: String,
        /// What SQLite said.
        cause: rusqlite::Error,
    },
    /// The database was written by a newer agent.
    #[error("state database {path} has schema version {found}; this upkeep reads versions up to {SCHEMA_VERSION}: use a newer upkeep")]
    TooNew {
        /// The database file.
        path: String,
        /// Its version.
        found: i64,
    },
    /// A row holds a value this build does not know (a damaged or foreign database).
    #[error("state database {path}: {what}")]
    Corrupt {
        /// The database file.
        path: String,
        /// What was wrong.
        what: String,
    },
    /// The filesystem holding the state directory is full: the database was opened to
    /// read only, and this change (or this read) needs room.
    #[error(
        "the state directory {dir} is full: {what}; free space on its filesystem and try again"
    )]
    DiskFull {
        /// The state directory.
        dir: String,
        /// What could not be done.
        what: String,
    },
}

impl StoreError {
    /// The WUA code: `WU_E_DS_INUSE` when locked too long, else `WU_E_DS_UNEXPECTED`.
    pub fn hresult(&self) -> HResult {
        match self {
            StoreError::Sqlite {
                cause: rusqlite::Error::SqliteFailure(e, _),
                ..
            } if e.code == rusqlite::ErrorCode::DatabaseBusy => HResult::WU_E_DS_INUSE,
            StoreError::Sqlite {
                cause: rusqlite::Error::SqliteFailure(e, _),
                ..
            } if e.code == rusqlite::ErrorCode::DiskFull => HResult::E_DISK_FULL,
            StoreError::DiskFull { .. } => HResult::E_DISK_FULL,
            _ => HResult::WU_E_DS_UNEXPECTED,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The schema version this build writes (`PRAGMA user_version`). Version 1 is the schema of
/// the first release, which did not set `user_version` (it reads as 0).
pub const SCHEMA_VERSION: i64 = 5;

/// One history entry (WUA's `IUpdateHistoryEntry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Installation or uninstallation.
    pub operation: UpdateOperation,
    /// The outcome.
    pub result_code: OperationResultCode,
    /// The mapped HRESULT.
    pub hresult: HResult,
    /// When (UTC).
    pub date: jiff::Timestamp,
    /// Update id.
    pub update_id: String,
    /// Revision.
    pub revision: u32,
    /// Title at the time.
    pub title: String,
    /// The caller (`ClientApplicationID`).
    pub client_application_id: String,
    /// The handler's raw result (a command's exit code), 0 when there is none.
    pub unmapped_result_code: i64,
    /// For an upgrade: the revision it replaced.
    pub previous_revision: Option<u32>,
    /// For an update removed because another one that supersedes it was installed: that
    /// update's id.
    pub replaced_by: Option<String>,
    /// Why it failed (the message the user saw), for a failure.
    pub message: Option<String>,
}

/// An installed update: what the agent keeps to show and uninstall it without the
/// repository.
#[derive(Clone, Debug, PartialEq)]
pub struct Installed {
    /// Update id.
    pub update_id: String,
    /// Revision installed.
    pub revision: u32,
    /// Title at install time.
    pub title: String,
    /// Handler id (`files`, `command`).
    pub handler: String,
    /// When.
    pub installed_at: jiff::Timestamp,
    /// Whether its install asked for a restart that has not happened yet.
    pub reboot_required: bool,
    /// The signed record it was installed from (`None` only for updates installed by an
    /// agent older than schema 2).
    pub record: Option<UpdateRecord>,
    /// For a `command` update: the directory (relative to the work directory) holding its
    /// verified content, kept for its uninstall.
    pub pinned: Option<String>,
}

/// The kind of a path an installed update owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnedKind {
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A directory (shared: several updates may use one).
    Dir,
}

/// One path an installed update owns (a file or symlink: exclusively) or uses (a
/// directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedPath {
    /// Path relative to the install root.
    pub path: String,
    /// What it is.
    pub kind: OwnedKind,
    /// Permission bits as installed.
    pub mode: u32,
    /// Size in bytes (files).
    pub size: u64,
    /// SHA-256 (hex) of a file's content, or a symlink's target; `None` when unknown
    /// (installed by an agent older than schema 2).
    pub digest: Option<String>,
    /// Where what was at this path before any installed update owned it is kept (a backup
    /// relative to the work directory); `None` when nothing was there.
    pub original: Option<String>,
    /// For a directory: an install created it, so the last update using it removes it.
    pub created: bool,
    /// What the file or symlink's inode and change time were once installed
    /// (`INO:CTIME_NS`); `None` when unknown (older agents). The same stamp now means
    /// nothing wrote, renamed or changed it since.
    pub stamp: Option<String>,
}

/// What a journal entry records of one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalKind {
    /// A directory was created; undone by removing it if empty.
    Dir,
    /// A directory was removed; undone by creating it again.
    Rmdir,
    /// A file or symlink was replaced, created or removed.
    File,
}

impl JournalKind {
    fn as_str(self) -> &'static str {
        match self {
            JournalKind::Dir => "dir",
            JournalKind::Rmdir => "rmdir",
            JournalKind::File => "file",
        }
    }
}

/// What a journal entry does to one path of the install root, recorded before it is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Path relative to the install root.
    pub path: String,
    /// What kind of change.
    pub kind: JournalKind,
    /// Where the previous file was linked aside, relative to the work directory, if the
    /// path existed.
    pub backup: Option<String>,
    /// Whether the backup outlives the commit (it becomes the new owner's `original`);
    /// otherwise it only serves rollback and is deleted at commit.
    pub keep_backup: bool,
    /// Mode of a `Dir`/`Rmdir` entry.
    pub mode: u32,
    /// For a file put back from an earlier backup: that backup (relative to the work
    /// directory), deleted once the transaction is committed.
    pub source: Option<String>,
}

/// The operation of an install transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxOperation {
    /// A first install.
    Install,
    /// A new revision, or a superseding update, replacing installed ones.
    Upgrade,
    /// An uninstall.
    Uninstall,
}

impl TxOperation {
    /// Its name (`install`, `upgrade`, `uninstall`), used in the journal and checkpoints.
    pub fn as_str(self) -> &'static str {
        match self {
            TxOperation::Install => "install",
            TxOperation::Upgrade => "upgrade",
            TxOperation::Uninstall => "uninstall",
        }
    }
}

/// The state of a journalled transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxState {
    /// Not committed: recovery rolls it back.
    Open,
    /// Committed: recovery finishes its clean-up.
    Committed,
}

/// What one commit records, in one SQLite transaction with the journal's `committed` mark.
#[derive(Debug, Default)]
pub struct Commit<'a> {
    /// The update now installed, with every path it owns (replacing its earlier revision's
    /// record and paths).
    pub installed: Option<(&'a Installed, &'a [OwnedPath])>,
    /// Updates no longer installed (uninstalled, or replaced by a superseding one): their
    /// records and paths go; a directory one of them created passes to the updates that
    /// still use it.
    pub removed: &'a [String],
    /// History rows.
    pub history: &'a [HistoryEntry],
    /// A restart is required to finish.
    pub reboot_required: bool,
}

/// The state database. One connection; cheap to open.
pub struct Store {
    conn: Connection,
    path: String,
    id: String,
    /// Opened to read only because the state directory's filesystem is full: every
    /// change fails with [`StoreError::DiskFull`].
    full_dir: Option<String>,
}

/// Whether `e`, from opening the database in `dir`, is the filesystem being full: SQLite
/// says so, or says "disk I/O error" (it cannot grow its shared-memory file) while the
/// filesystem has no room left.
fn disk_full(dir: &Path, e: &StoreError) -> bool {
    let StoreError::Sqlite {
        cause: rusqlite::Error::SqliteFailure(f, _),
        ..
    } = e
    else {
        return false;
    };
    f.code == rusqlite::ErrorCode::DiskFull
        || (f.code == rusqlite::ErrorCode::SystemIoFailure
            && upkeep_fs::free_space(dir).is_ok_and(|n| n < 64 << 10))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// 128 random bits as hex, from the kernel.
fn random_id() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // No entropy source: time and pid still never repeat on one machine.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        return format!("{t:x}-{:x}", std::process::id());
    }
    hex::encode(b)
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The current schema, for a new database.
const SCHEMA: &str = "
CREATE TABLE installed(
  update_id TEXT PRIMARY KEY, revision INTEGER NOT NULL, title TEXT NOT NULL,
  handler TEXT NOT NULL, installed_at TEXT NOT NULL, reboot_required INTEGER NOT NULL,
  record TEXT, pinned TEXT);
CREATE TABLE hidden(update_id TEXT PRIMARY KEY);
CREATE TABLE eula(update_id TEXT NOT NULL, revision INTEGER NOT NULL,
  accepted_at TEXT NOT NULL, PRIMARY KEY(update_id, revision));
CREATE TABLE history(seq INTEGER PRIMARY KEY AUTOINCREMENT,
  operation INTEGER NOT NULL, result_code INTEGER NOT NULL, hresult INTEGER NOT NULL,
  date TEXT NOT NULL, update_id TEXT NOT NULL, revision INTEGER NOT NULL, title TEXT NOT NULL,
  client_application_id TEXT NOT NULL, unmapped_result_code INTEGER NOT NULL,
  previous_revision INTEGER, replaced_by TEXT, message TEXT);
CREATE TABLE reboot(id INTEGER PRIMARY KEY CHECK (id = 1), boot_id TEXT NOT NULL);
CREATE TABLE tx(tx_id INTEGER PRIMARY KEY AUTOINCREMENT, update_id TEXT NOT NULL,
  operation TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE journal(tx_id INTEGER NOT NULL, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, path TEXT NOT NULL, backup TEXT, keep INTEGER NOT NULL, mode INTEGER NOT NULL,
  source TEXT, PRIMARY KEY(tx_id, seq));
CREATE TABLE owned(update_id TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL,
  mode INTEGER NOT NULL, size INTEGER NOT NULL, digest TEXT, original TEXT,
  created INTEGER NOT NULL, stamp TEXT, PRIMARY KEY(update_id, path));
CREATE INDEX owned_path ON owned(path);
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// Version 3 → 4: why a history entry failed.
const MIGRATE_3_TO_4: &str = "
ALTER TABLE history ADD COLUMN message TEXT;
";

/// Schema 5: each owned file's stamp as installed (inode and change time), so that a file
/// untouched since is known unchanged without hashing it.
const MIGRATE_4_TO_5: &str = "
ALTER TABLE owned ADD COLUMN stamp TEXT;
";

/// Version 2 → 3: the database's own identity (`meta.store_id`), which the install work
/// tree is bound to.
const MIGRATE_2_TO_3: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// Version 1 (the first release) → 2: installed records and pinned content, owned paths
/// with kinds, digests and originals, journal entries that say whether a backup is kept,
/// upgrade and replacement in history.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE installed ADD COLUMN record TEXT;
ALTER TABLE installed ADD COLUMN pinned TEXT;
ALTER TABLE history ADD COLUMN previous_revision INTEGER;
ALTER TABLE history ADD COLUMN replaced_by TEXT;
ALTER TABLE journal ADD COLUMN keep INTEGER NOT NULL DEFAULT 0;
UPDATE journal SET keep = (SELECT operation = 'install' FROM tx WHERE tx.tx_id = journal.tx_id);
CREATE TABLE owned2(update_id TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL,
  mode INTEGER NOT NULL, size INTEGER NOT NULL, digest TEXT, original TEXT,
  created INTEGER NOT NULL, PRIMARY KEY(update_id, path));
INSERT OR REPLACE INTO owned2 SELECT update_id, path, kind, CASE kind WHEN 'dir' THEN mode ELSE 0 END,
  0, NULL, backup, kind = 'dir' FROM owned ORDER BY seq;
DROP TABLE owned;
ALTER TABLE owned2 RENAME TO owned;
CREATE INDEX owned_path ON owned(path);
";

/// The boot id of the running kernel (changes at every boot).
pub fn boot_id() -> String {
    upkeep_fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn insert_history(conn: &Connection, h: &HistoryEntry) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO history (operation, result_code, hresult, date, update_id, revision, title, client_application_id, unmapped_result_code, previous_revision, replaced_by, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            h.operation as i32,
            h.result_code as i32,
            h.hresult.0,
            h.date.to_string(),
            h.update_id,
            h.revision,
            h.title,
            h.client_application_id,
            h.unmapped_result_code,
            h.previous_revision,
            h.replaced_by,
            h.message,
        ],
    )
    .map(|_| ())
}

/// A value read from a row that this build does not know.
fn unknown(what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unknown {what} {value:?}").into(),
    )
}

/// A `journal` row selected as `kind, path, backup, keep, mode, source`. An unknown kind is
/// an error: recovery must not skip what it does not understand.
fn journal_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalEntry> {
    let kind: String = r.get(0)?;
    Ok(JournalEntry {
        kind: match kind.as_str() {
            "dir" => JournalKind::Dir,
            "rmdir" => JournalKind::Rmdir,
            "file" => JournalKind::File,
            other => return Err(unknown("journal entry kind", other)),
        },
        path: r.get(1)?,
        backup: r.get(2)?,
        keep_backup: r.get(3)?,
        mode: r.get(4)?,
        source: r.get(5)?,
    })
}

fn owned_kind(kind: OwnedKind) -> &'static str {
    match kind {
        OwnedKind::File => "file",
        OwnedKind::Symlink => "symlink",
        OwnedKind::Dir => "dir",
    }
}

/// An `owned` row selected as `path, kind, mode, size, digest, original, created`.
fn owned_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OwnedPath> {
    let kind: String = r.get(1)?;
    Ok(OwnedPath {
        path: r.get(0)?,
        kind: match kind.as_str() {
            "file" => OwnedKind::File,
            "symlink" => OwnedKind::Symlink,
            "dir" => OwnedKind::Dir,
            other => return Err(unknown("owned path kind", other)),
        },
        mode: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        digest: r.get(4)?,
        original: r.get(5)?,
        created: r.get(6)?,
        stamp: r.get(7)?,
    })
}

/// A transaction of the install journal, as recovery finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenTx {
    /// Its id.
    pub tx_id: i64,
    /// The update.
    pub update_id: String,
    /// What it does.
    pub operation: TxOperation,
    /// Whether it was committed.
    pub state: TxState,
}

impl Store {
    /// Opens (creating) `<dir>/state.db`, creating or migrating the schema.
    ///
    /// When the filesystem holding `dir` is full (SQLite cannot even map its shared-memory
    /// index), the database is opened to read only instead, so that reading commands
    /// (`list`, `history`, `status`, offline searches) still work; every change then
    /// fails with [`StoreError::DiskFull`] naming the directory. Only a database whose
    /// write-ahead log is empty is read that way (else what it holds would be missed).
    pub fn open(dir: &Path) -> Result<Store> {
        match Store::open_rw(dir) {
            Ok(s) => Ok(s),
            Err(e) if disk_full(dir, &e) => Store::open_full(dir, e),
            Err(e) => Err(e),
        }
    }

    /// Whether this store was opened to read only on a full disk.
    pub fn is_read_only(&self) -> bool {
        self.full_dir.is_some()
    }

    fn open_full(dir: &Path, cause: StoreError) -> Result<Store> {
        let path = dir.join("state.db");
        let shown = dir.display().to_string();
        let full = |what: String| StoreError::DiskFull {
            dir: shown.clone(),
            what,
        };
        let wal = upkeep_fs::metadata(dir.join("state.db-wal")).map_or(0, |m| m.len());
        if wal > 0 || !path.is_file() {
            return Err(full(format!(
                "the state database cannot be opened ({cause})"
            )));
        }
        // Nothing is in the log: the database file is the whole state, and read as a file
        // that does not change it needs no shared memory.
        // A URI: `%`, `?` and `#` of the path escaped.
        let escaped: String = path
            .display()
            .to_string()
            .chars()
            .map(|c| match c {
                '%' => "%25".to_string(),
                '?' => "%3f".to_string(),
                '#' => "%23".to_string(),
                c => c.to_string(),
            })
            .collect();
        let uri = format!("file:{escaped}?mode=ro&immutable=1");
        let conn = Connection::open_with_flags(
            &uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                | rusqlite::OpenFlags::SQLITE_OPEN_URI
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| full(format!("the state database cannot be read ({e})")))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| full(format!("the state database cannot be read ({e})")))?;
        if version != SCHEMA_VERSION {
            return Err(full(format!(
                "the state database has schema version {version} and needs room to be migrated to {SCHEMA_VERSION}"
            )));
        }
        let id: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .map_err(|e| full(format!("the state database cannot be read ({e})")))?;
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!(dir = %shown, "the state directory is full: its database is open to read only");
        });
        Ok(Store {
            conn,
            path: path.display().to_string(),
            id,
            full_dir: Some(shown),
        })
    }

    fn open_rw(dir: &Path) -> Result<Store> {
        let path = dir.join("state.db");
        let e = |cause| StoreError::Sqlite {
            path: path.display().to_string(),
            cause,
        };
        let mut conn = Connection::open(&path).map_err(e)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(e)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        let store_path = path.display().to_string();
        // One writer at a time decides and applies the schema.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(e)?;
        let has_tables: bool = tx
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'installed'",
                [],
                |r| r.get(0),
            )
            .map_err(e)?;
        match (version, has_tables) {
            (v, _) if v > SCHEMA_VERSION => {
                return Err(StoreError::TooNew {
                    path: store_path,
                    found: v,
                })
            }
            (SCHEMA_VERSION, _) => {}
            (0, false) => {
                tx.execute_batch(SCHEMA).map_err(e)?;
            }
            (0..=4, true) => {
                tracing::info!(db = %store_path, "migrating the state database from schema {} to {SCHEMA_VERSION}", version.max(1));
                if version < 2 {
                    tx.execute_batch(MIGRATE_1_TO_2).map_err(e)?;
                }
                if version < 3 {
                    tx.execute_batch(MIGRATE_2_TO_3).map_err(e)?;
                }
                if version < 4 {
                    tx.execute_batch(MIGRATE_3_TO_4).map_err(e)?;
                }
                tx.execute_batch(MIGRATE_4_TO_5).map_err(e)?
            }
            (v, _) => {
                return Err(StoreError::Corrupt {
                    path: store_path,
                    what: format!("schema version {v} without its tables"),
                })
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(e)?;
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?1)",
            [random_id()],
        )
        .map_err(e)?;
        let id: String = tx
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(Store {
            conn,
            path: store_path,
            id,
            full_dir: None,
        })
    }

    /// Records that `notice` (a warning's text) was said; true the first time only, so
    /// that a standing condition (an id two services offer) is reported once, not on every
    /// search. On a read-only store (full disk) nothing is recorded and it is said again.
    pub fn first_notice(&self, notice: &str) -> Result<bool> {
        if self.full_dir.is_some() {
            return Ok(true);
        }
        let key = format!("notice:{}", hex::encode(&sha256(notice.as_bytes())[..16]));
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                rusqlite::params![key, notice],
            )
            .map_err(self.e())?;
        Ok(n == 1)
    }

    /// This database's identity: random, made when the database was created (or migrated
    /// to schema 3), never reused. Files the agent keeps beside the database (the install
    /// work tree) are bound to it, so a lost or replaced database is recognised.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The database file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs a SELECT and maps every row.
    fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let mut st = self.conn.prepare_cached(sql).map_err(self.e())?;
        let rows = st.query_map(params, map).map_err(self.e())?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(self.e())
    }

    fn e(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| match source {
            rusqlite::Error::SqliteFailure(f, _)
                if self.full_dir.is_some() && f.code == rusqlite::ErrorCode::ReadOnly =>
            {
                StoreError::DiskFull {
                    dir: self.full_dir.clone().unwrap_or_default(),
                    what: "the state cannot be changed".into(),
                }
            }
            rusqlite::Error::FromSqlConversionFailure(_, _, what) => StoreError::Corrupt {
                path: self.path.clone(),
                what: what.to_string(),
            },
            cause => StoreError::Sqlite {
                path: self.path.clone(),
                cause,
            },
        }
    }

    /// Every installed update.
    pub fn installed(&self) -> Result<Vec<Installed>> {
        let pending = self.reboot_pending()?;
        self.rows(
            "SELECT update_id, revision, title, handler, installed_at, reboot_required, record, pinned FROM installed ORDER BY installed_at, update_id",
            [], |r| {
                let record: Option<String> = r.get(6)?;
                let record = match record {
                    None => None,
                    Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, format!("installed record: {e}").into())
                    })?),
                };
                Ok(Installed {
                    update_id: r.get(0)?,
                    revision: r.get(1)?,
                    title: r.get(2)?,
                    handler: r.get(3)?,
                    installed_at: ts(&r.get::<_, String>(4)?),
                    reboot_required: r.get::<_, bool>(5)? && pending,
                    record,
                    pinned: r.get(7)?,
                })
            },
        )
    }

    /// The installed update with this id, if any.
    pub fn installed_update(&self, update_id: &str) -> Result<Option<Installed>> {
        Ok(self
            .installed()?
            .into_iter()
            .find(|i| i.update_id == update_id))
    }

    /// Hidden update ids.
    pub fn hidden(&self) -> Result<Vec<String>> {
        self.rows("SELECT update_id FROM hidden", [], |r| r.get(0))
    }

    /// Hides or shows an update.
    pub fn set_hidden(&self, update_id: &str, hidden: bool) -> Result<()> {
        if hidden {
            self.conn
                .execute("INSERT OR IGNORE INTO hidden VALUES (?1)", [update_id])
        } else {
            self.conn
                .execute("DELETE FROM hidden WHERE update_id = ?1", [update_id])
        }
        .map(|_| ())
        .map_err(self.e())
    }

    /// (update id, revision) of every accepted EULA.
    pub fn accepted_eulas(&self) -> Result<Vec<(String, u32)>> {
        self.rows("SELECT update_id, revision FROM eula", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    /// Records an accepted EULA.
    pub fn accept_eula(&self, update_id: &str, revision: u32) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO eula VALUES (?1, ?2, ?3)",
                params![update_id, revision, now()],
            )
            .map(|_| ())
            .map_err(self.e())
    }

    /// Whether a restart is pending: one was asked for since this boot. A new boot clears it.
    pub fn reboot_pending(&self) -> Result<bool> {
        let recorded: Option<String> = self
            .conn
            .query_row("SELECT boot_id FROM reboot WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(self.e())?;
        match recorded {
            None => Ok(false),
            Some(b) if b == boot_id() => Ok(true),
            Some(_) => {
                self.conn
                    .execute_batch(
                        "BEGIN IMMEDIATE; DELETE FROM reboot; UPDATE installed SET reboot_required = 0; COMMIT;",
                    )
                    .map_err(self.e())?;
                Ok(false)
            }
        }
    }

    /// Appends a history entry.
    pub fn add_history(&self, h: &HistoryEntry) -> Result<()> {
        insert_history(&self.conn, h).map_err(self.e())
    }

    /// History entries, newest first, from `start` (0 = newest), at most `count`.
    pub fn history(&self, start: usize, count: usize) -> Result<Vec<HistoryEntry>> {
        self.rows(
            "SELECT operation, result_code, hresult, date, update_id, revision, title, client_application_id, unmapped_result_code, previous_revision, replaced_by, message FROM history ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
            params![count as i64, start as i64], |r| {
                Ok(HistoryEntry {
                    operation: UpdateOperation::from_i32(r.get(0)?)
                        .unwrap_or(UpdateOperation::Installation),
                    result_code: OperationResultCode::from_i32(r.get(1)?)
                        .unwrap_or(OperationResultCode::Failed),
                    hresult: HResult(r.get(2)?),
                    date: ts(&r.get::<_, String>(3)?),
                    update_id: r.get(4)?,
                    revision: r.get(5)?,
                    title: r.get(6)?,
                    client_application_id: r.get(7)?,
                    unmapped_result_code: r.get(8)?,
                    previous_revision: r.get(9)?,
                    replaced_by: r.get(10)?,
                    message: r.get(11)?,
                })
            },
        )
    }

    /// Number of history entries.
    pub fn history_count(&self) -> Result<usize> {
        self.conn
            .query_row("SELECT COUNT(*) FROM history", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(self.e())
    }

    // ----- the install journal -----

    /// Starts a transaction (state `open`): from here until it is committed, recovery rolls
    /// it back.
    pub fn begin_tx(&self, update_id: &str, operation: TxOperation) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO tx (update_id, operation, state) VALUES (?1, ?2, 'open')",
                params![update_id, operation.as_str()],
            )
            .map_err(self.e())?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Appends journal entries (numbered from `first_seq`) in one durable SQLite
    /// transaction: they are on disk before this returns.
    pub fn journal(&self, tx_id: i64, first_seq: usize, entries: &[JournalEntry]) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(self.e())?;
        {
            let mut st = tx
                .prepare_cached("INSERT INTO journal (tx_id, seq, kind, path, backup, keep, mode, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
                .map_err(self.e())?;
            for (i, e) in entries.iter().enumerate() {
                st.execute(params![
                    tx_id,
                    (first_seq + i) as i64,
                    e.kind.as_str(),
                    e.path,
                    e.backup,
                    e.keep_backup,
                    e.mode,
                    e.source
                ])
                .map_err(self.e())?;
            }
        }
        tx.commit().map_err(self.e())
    }

    /// The journal of a transaction, in order; an entry of an unknown kind is an error.
    pub fn journal_entries(&self, tx_id: i64) -> Result<Vec<JournalEntry>> {
        self.rows(
            "SELECT kind, path, backup, keep, mode, source FROM journal WHERE tx_id = ?1 ORDER BY seq",
            [tx_id],
            journal_row,
        )
    }

    /// Transactions recovery must look at; an unknown operation or state is an error.
    pub fn unfinished_txs(&self) -> Result<Vec<OpenTx>> {
        self.rows(
            "SELECT tx_id, update_id, operation, state FROM tx ORDER BY tx_id",
            [],
            |r| {
                let op: String = r.get(2)?;
                let state: String = r.get(3)?;
                Ok(OpenTx {
                    tx_id: r.get(0)?,
                    update_id: r.get(1)?,
                    operation: match op.as_str() {
                        "install" => TxOperation::Install,
                        "upgrade" => TxOperation::Upgrade,
                        "uninstall" => TxOperation::Uninstall,
                        other => return Err(unknown("transaction operation", other)),
                    },
                    state: match state.as_str() {
                        "open" => TxState::Open,
                        "committed" => TxState::Committed,
                        other => return Err(unknown("transaction state", other)),
                    },
                })
            },
        )
    }

    /// Commits a transaction: in one SQLite transaction, records what is installed now,
    /// who owns which path, the history rows and a pending restart, and marks the
    /// transaction committed. Call only after the install root was flushed (`syncfs`).
    pub fn commit(&self, tx_id: i64, c: &Commit<'_>) -> Result<()> {
        let e = self.e();
        let tx = self.conn.unchecked_transaction().map_err(&e)?;
        if let Some((rec, owned)) = c.installed {
            tx.execute("DELETE FROM owned WHERE update_id = ?1", [&rec.update_id])
                .map_err(&e)?;
            let mut st = tx
                .prepare_cached("INSERT INTO owned VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")
                .map_err(&e)?;
            for o in owned {
                st.execute(params![
                    rec.update_id,
                    o.path,
                    owned_kind(o.kind),
                    o.mode,
                    o.size as i64,
                    o.digest,
                    o.original,
                    o.created,
                    o.stamp
                ])
                .map_err(&e)?;
            }
            let record = rec
                .record
                .as_ref()
                .map(|r| serde_json::to_string(r).expect("a record serialises"));
            tx.execute(
                "INSERT OR REPLACE INTO installed VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    rec.update_id,
                    rec.revision,
                    rec.title,
                    rec.handler,
                    rec.installed_at.to_string(),
                    rec.reboot_required,
                    record,
                    rec.pinned
                ],
            )
            .map_err(&e)?;
        }
        for id in c.removed {
            // A directory this update created stays created for whoever still uses it.
            tx.execute(
                "UPDATE owned SET created = 1 WHERE kind = 'dir' AND update_id != ?1 AND path IN (SELECT path FROM owned WHERE update_id = ?1 AND kind = 'dir' AND created = 1)",
                [id],
            )
            .map_err(&e)?;
            tx.execute("DELETE FROM owned WHERE update_id = ?1", [id])
                .map_err(&e)?;
            tx.execute("DELETE FROM installed WHERE update_id = ?1", [id])
                .map_err(&e)?;
        }
        if c.reboot_required {
            tx.execute("INSERT OR REPLACE INTO reboot VALUES (1, ?1)", [boot_id()])
                .map_err(&e)?;
        }
        for h in c.history {
            insert_history(&tx, h).map_err(&e)?;
        }
        tx.execute(
            "UPDATE tx SET state = 'committed' WHERE tx_id = ?1",
            [tx_id],
        )
        .map_err(&e)?;
        tx.commit().map_err(&e)
    }

    /// Forgets a finished (rolled back, or committed and cleaned up) transaction.
    pub fn end_tx(&self, tx_id: i64) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(self.e())?;
        tx.execute("DELETE FROM journal WHERE tx_id = ?1", [tx_id])
            .map_err(self.e())?;
        tx.execute("DELETE FROM tx WHERE tx_id = ?1", [tx_id])
            .map_err(self.e())?;
        tx.commit().map_err(self.e())
    }

    /// What an installed update owns and uses, in path order (parents before children).
    pub fn owned(&self, update_id: &str) -> Result<Vec<OwnedPath>> {
        self.rows(
            "SELECT path, kind, mode, size, digest, original, created, stamp FROM owned WHERE update_id = ?1 ORDER BY path",
            [update_id],
            owned_row,
        )
    }

    /// Every owned path with its owner: `(update id, path, kind)`.
    pub fn owners(&self) -> Result<Vec<(String, String, OwnedKind)>> {
        self.rows("SELECT update_id, path, kind FROM owned", [], |r| {
            let kind: String = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                match kind.as_str() {
                    "file" => OwnedKind::File,
                    "symlink" => OwnedKind::Symlink,
                    "dir" => OwnedKind::Dir,
                    other => return Err(unknown("owned path kind", other)),
                },
            ))
        })
    }

    /// Bytes of the files an installed update owns.
    pub fn owned_size(&self, update_id: &str) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(size), 0) FROM owned WHERE update_id = ?1",
                [update_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.e())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, op: UpdateOperation, code: OperationResultCode) -> HistoryEntry {
        HistoryEntry {
            operation: op,
            result_code: code,
            hresult: HResult::S_OK,
            date: jiff::Timestamp::now(),
            update_id: id.into(),
            revision: 1,
            title: format!("t {id}"),
            client_application_id: "test".into(),
            unmapped_result_code: 0,
            previous_revision: None,
            replaced_by: None,
            message: None,
        }
    }

    fn rec(id: &str, revision: u32) -> Installed {
        Installed {
            update_id: id.into(),
            revision,
            title: "T".into(),
            handler: "files".into(),
            installed_at: jiff::Timestamp::now(),
            reboot_required: true,
            record: None,
            pinned: None,
        }
    }

    fn path(p: &str, kind: OwnedKind, created: bool) -> OwnedPath {
        OwnedPath {
            path: p.into(),
            kind,
            mode: 0o644,
            size: 3,
            digest: Some("ab".into()),
            original: None,
            created,
            stamp: None,
        }
    }

    #[test]
    fn history_is_newest_first_and_paged() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        for i in 0..5 {
            s.add_history(&entry(
                &i.to_string(),
                UpdateOperation::Installation,
                OperationResultCode::Succeeded,
            ))
            .unwrap();
        }
        assert_eq!(s.history_count().unwrap(), 5);
        let page: Vec<String> = s
            .history(1, 2)
            .unwrap()
            .into_iter()
            .map(|h| h.update_id)
            .collect();
        assert_eq!(page, ["3", "2"]);
    }

    #[test]
    fn commit_records_ownership_state_and_history_together() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let tx = s.begin_tx("u", TxOperation::Install).unwrap();
        let e = JournalEntry {
            path: "a/b".into(),
            kind: JournalKind::File,
            backup: Some("backups/1/0".into()),
            keep_backup: true,
            mode: 0,
            source: None,
        };
        s.journal(tx, 0, std::slice::from_ref(&e)).unwrap();
        assert_eq!(s.journal_entries(tx).unwrap(), vec![e]);
        assert_eq!(s.unfinished_txs().unwrap()[0].state, TxState::Open);
        let owned = [
            path("a", OwnedKind::Dir, true),
            path("a/b", OwnedKind::File, false),
        ];
        s.commit(
            tx,
            &Commit {
                installed: Some((&rec("u", 2), &owned)),
                history: &[entry(
                    "u",
                    UpdateOperation::Installation,
                    OperationResultCode::Succeeded,
                )],
                reboot_required: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.unfinished_txs().unwrap()[0].state, TxState::Committed);
        assert_eq!(s.owned("u").unwrap(), owned);
        assert_eq!(s.installed().unwrap()[0].revision, 2);
        assert_eq!(s.owned_size("u").unwrap(), 6);
        assert!(s.reboot_pending().unwrap());
        s.end_tx(tx).unwrap();
        assert!(s.unfinished_txs().unwrap().is_empty());
        assert_eq!(
            s.owned("u").unwrap().len(),
            2,
            "ownership outlives the journal"
        );
    }

    #[test]
    fn a_removed_update_passes_the_directories_it_created_to_their_other_users() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        for (id, created) in [("a", true), ("b", false)] {
            let tx = s.begin_tx(id, TxOperation::Install).unwrap();
            let owned = [
                path("opt", OwnedKind::Dir, created),
                path(&format!("opt/{id}"), OwnedKind::File, false),
            ];
            s.commit(
                tx,
                &Commit {
                    installed: Some((&rec(id, 1), &owned)),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let tx = s.begin_tx("a", TxOperation::Uninstall).unwrap();
        s.commit(
            tx,
            &Commit {
                removed: &["a".to_string()],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(s.owned("a").unwrap().is_empty());
        assert_eq!(s.installed().unwrap().len(), 1);
        assert!(
            s.owned("b").unwrap()[0].created,
            "b now removes opt when it goes"
        );
    }

    #[test]
    fn unknown_journal_entries_stop_recovery_with_an_error() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let tx = s.begin_tx("u", TxOperation::Install).unwrap();
        s.conn
            .execute(
                "INSERT INTO journal VALUES (?1, 0, 'chmod', 'a', NULL, 0, 0, NULL)",
                [tx],
            )
            .unwrap();
        let e = s.journal_entries(tx).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("chmod"), "{e}");
        s.conn
            .execute("UPDATE tx SET operation = 'frobnicate'", [])
            .unwrap();
        assert!(s.unfinished_txs().is_err());
    }

    #[test]
    fn a_new_boot_clears_the_pending_reboot() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.conn
            .execute("INSERT INTO reboot VALUES (1, 'an-earlier-boot')", [])
            .unwrap();
        assert!(!s.reboot_pending().unwrap());
        assert!(
            s.conn
                .query_row("SELECT COUNT(*) FROM reboot", [], |r| r.get::<_, i64>(0))
                .unwrap()
                == 0
        );
    }

    #[test]
    fn hidden_and_eulas_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.set_hidden("a", true).unwrap();
        s.set_hidden("a", true).unwrap();
        assert_eq!(s.hidden().unwrap(), ["a"]);
        s.set_hidden("a", false).unwrap();
        assert!(s.hidden().unwrap().is_empty());
        s.accept_eula("b", 3).unwrap();
        assert_eq!(s.accepted_eulas().unwrap(), [("b".to_string(), 3)]);
    }
}
