//! upkeep's state in one SQLite database (`<state_dir>/state.db`, WAL, `synchronous=FULL`):
//! installed updates with their revision, hidden updates, accepted EULAs, history, the
//! pending reboot, and the journal of install transactions with the files each installed
//! update owns.
//!
//! Every write is one SQLite transaction, so a crash leaves the previous or the new state.
//! The journal's durability rules (design decision 5): a batch of journal entries is
//! committed before any change it describes is made; a transaction is marked committed only
//! after the install root was flushed, in the same SQLite transaction that records the
//! installed update, so state and files always agree after recovery.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use upkeep_types::{HResult, OperationResultCode, UpdateOperation};

/// A state database failure.
#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {source}")]
pub struct StoreError {
    path: String,
    #[source]
    source: rusqlite::Error,
}

impl StoreError {
    /// The WUA code: `WU_E_DS_UNEXPECTED` (or `WU_E_DS_INUSE` when locked too long).
    pub fn hresult(&self) -> HResult {
        match &self.source {
            rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                HResult::WU_E_DS_INUSE
            }
            _ => HResult::WU_E_DS_UNEXPECTED,
        }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, StoreError>;

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
}

/// An installed update.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// What a journal entry does to one path of the install root, recorded before it is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Path relative to the install root.
    pub path: String,
    /// `dir` (created; undone by removing it if empty), `rmdir` (removed; undone by creating
    /// it again), or `file` (a file or symlink replaced, created or removed).
    pub kind: String,
    /// Where the previous file was linked aside, relative to the work directory, if the
    /// path existed.
    pub backup: Option<String>,
    /// Mode of a `dir`/`rmdir` entry.
    pub mode: u32,
    /// For a file an uninstall restores: the install's backup it comes from (relative to
    /// the work directory), deleted once the uninstall is committed.
    pub source: Option<String>,
}

/// The state database. One connection; cheap to open.
pub struct Store {
    conn: Connection,
    path: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS installed(
  update_id TEXT PRIMARY KEY, revision INTEGER NOT NULL, title TEXT NOT NULL,
  handler TEXT NOT NULL, installed_at TEXT NOT NULL, reboot_required INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS hidden(update_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS eula(update_id TEXT NOT NULL, revision INTEGER NOT NULL,
  accepted_at TEXT NOT NULL, PRIMARY KEY(update_id, revision));
CREATE TABLE IF NOT EXISTS history(seq INTEGER PRIMARY KEY AUTOINCREMENT,
  operation INTEGER NOT NULL, result_code INTEGER NOT NULL, hresult INTEGER NOT NULL,
  date TEXT NOT NULL, update_id TEXT NOT NULL, revision INTEGER NOT NULL, title TEXT NOT NULL,
  client_application_id TEXT NOT NULL, unmapped_result_code INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reboot(id INTEGER PRIMARY KEY CHECK (id = 1), boot_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tx(tx_id INTEGER PRIMARY KEY AUTOINCREMENT, update_id TEXT NOT NULL,
  operation TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal(tx_id INTEGER NOT NULL, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, path TEXT NOT NULL, backup TEXT, mode INTEGER NOT NULL, source TEXT,
  PRIMARY KEY(tx_id, seq));
CREATE TABLE IF NOT EXISTS owned(update_id TEXT NOT NULL, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, path TEXT NOT NULL, backup TEXT, mode INTEGER NOT NULL, source TEXT,
  PRIMARY KEY(update_id, seq));
";

/// The boot id of the running kernel (changes at every boot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
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
        "INSERT INTO history (operation, result_code, hresult, date, update_id, revision, title, client_application_id, unmapped_result_code) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            h.operation as i32,
            h.result_code as i32,
            h.hresult.0,
            h.date.to_string(),
            h.update_id,
            h.revision,
            h.title,
            h.client_application_id,
            h.unmapped_result_code
        ],
    )
    .map(|_| ())
}

/// A `journal` or `owned` row selected as `kind, path, backup, mode, source`.
fn journal_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalEntry> {
    Ok(JournalEntry {
        kind: r.get(0)?,
        path: r.get(1)?,
        backup: r.get(2)?,
        mode: r.get(3)?,
        source: r.get(4)?,
    })
}

/// A transaction of the install journal, as recovery finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenTx {
    /// Its id.
    pub tx_id: i64,
    /// The update.
    pub update_id: String,
    /// `install` or `uninstall`.
    pub operation: String,
    /// `open` (roll back) or `committed` (finish the clean-up).
    pub state: String,
}

impl Store {
    /// Opens (creating) `<dir>/state.db`.
    pub fn open(dir: &Path) -> Result<Store> {
        let path = dir.join("state.db");
        let e = |source| StoreError {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(e)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(e)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        conn.execute_batch(SCHEMA).map_err(e)?;
        Ok(Store {
            conn,
            path: path.display().to_string(),
        })
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
        move |source| StoreError {
            path: self.path.clone(),
            source,
        }
    }

    /// Every installed update.
    pub fn installed(&self) -> Result<Vec<Installed>> {
        let pending = self.reboot_pending()?;
        self.rows(
            "SELECT update_id, revision, title, handler, installed_at, reboot_required FROM installed",
            [], |r| {
                Ok(Installed {
                    update_id: r.get(0)?,
                    revision: r.get(1)?,
                    title: r.get(2)?,
                    handler: r.get(3)?,
                    installed_at: ts(&r.get::<_, String>(4)?),
                    reboot_required: r.get::<_, bool>(5)? && pending,
                })
            },
        )
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
            "SELECT operation, result_code, hresult, date, update_id, revision, title, client_application_id, unmapped_result_code FROM history ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
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
    pub fn begin_tx(&self, update_id: &str, operation: &str) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO tx (update_id, operation, state) VALUES (?1, ?2, 'open')",
                params![update_id, operation],
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
                .prepare_cached("INSERT INTO journal VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .map_err(self.e())?;
            for (i, e) in entries.iter().enumerate() {
                st.execute(params![
                    tx_id,
                    (first_seq + i) as i64,
                    e.kind,
                    e.path,
                    e.backup,
                    e.mode,
                    e.source
                ])
                .map_err(self.e())?;
            }
        }
        tx.commit().map_err(self.e())
    }

    /// The journal of a transaction, in order.
    pub fn journal_entries(&self, tx_id: i64) -> Result<Vec<JournalEntry>> {
        self.rows(
            "SELECT kind, path, backup, mode, source FROM journal WHERE tx_id = ?1 ORDER BY seq",
            [tx_id],
            journal_row,
        )
    }

    /// Transactions recovery must look at.
    pub fn unfinished_txs(&self) -> Result<Vec<OpenTx>> {
        self.rows(
            "SELECT tx_id, update_id, operation, state FROM tx ORDER BY tx_id",
            [],
            |r| {
                Ok(OpenTx {
                    tx_id: r.get(0)?,
                    update_id: r.get(1)?,
                    operation: r.get(2)?,
                    state: r.get(3)?,
                })
            },
        )
    }

    /// Commits an install: in one SQLite transaction the journal becomes what the update
    /// owns, the update is recorded installed, and the transaction is marked committed.
    /// Call only after the install root was flushed (`syncfs`).
    pub fn commit_install(
        &self,
        tx_id: i64,
        rec: &Installed,
        history: &HistoryEntry,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(self.e())?;
        tx.execute("DELETE FROM owned WHERE update_id = ?1", [&rec.update_id])
            .map_err(self.e())?;
        tx.execute(
            "INSERT INTO owned SELECT ?2, seq, kind, path, backup, mode, source FROM journal WHERE tx_id = ?1",
            params![tx_id, rec.update_id],
        )
        .map_err(self.e())?;
        tx.execute(
            "INSERT OR REPLACE INTO installed VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                rec.update_id,
                rec.revision,
                rec.title,
                rec.handler,
                rec.installed_at.to_string(),
                rec.reboot_required
            ],
        )
        .map_err(self.e())?;
        if rec.reboot_required {
            tx.execute("INSERT OR REPLACE INTO reboot VALUES (1, ?1)", [boot_id()])
                .map_err(self.e())?;
        }
        insert_history(&tx, history).map_err(self.e())?;
        tx.execute(
            "UPDATE tx SET state = 'committed' WHERE tx_id = ?1",
            [tx_id],
        )
        .map_err(self.e())?;
        tx.commit().map_err(self.e())
    }

    /// Commits an uninstall: the update is no longer installed nor owns anything.
    pub fn commit_uninstall(
        &self,
        tx_id: i64,
        update_id: &str,
        reboot_required: bool,
        history: &HistoryEntry,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(self.e())?;
        tx.execute("DELETE FROM installed WHERE update_id = ?1", [update_id])
            .map_err(self.e())?;
        tx.execute("DELETE FROM owned WHERE update_id = ?1", [update_id])
            .map_err(self.e())?;
        if reboot_required {
            tx.execute("INSERT OR REPLACE INTO reboot VALUES (1, ?1)", [boot_id()])
                .map_err(self.e())?;
        }
        insert_history(&tx, history).map_err(self.e())?;
        tx.execute(
            "UPDATE tx SET state = 'committed' WHERE tx_id = ?1",
            [tx_id],
        )
        .map_err(self.e())?;
        tx.commit().map_err(self.e())
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

    /// What an installed update owns (its install journal), in order.
    pub fn owned(&self, update_id: &str) -> Result<Vec<JournalEntry>> {
        self.rows(
            "SELECT kind, path, backup, mode, source FROM owned WHERE update_id = ?1 ORDER BY seq",
            [update_id],
            journal_row,
        )
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
    fn commit_install_records_ownership_state_and_history_together() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let tx = s.begin_tx("u", "install").unwrap();
        let e = JournalEntry {
            path: "a/b".into(),
            kind: "file".into(),
            backup: Some("backups/1/0".into()),
            mode: 0,
            source: None,
        };
        s.journal(tx, 0, std::slice::from_ref(&e)).unwrap();
        assert_eq!(s.unfinished_txs().unwrap()[0].state, "open");
        let rec = Installed {
            update_id: "u".into(),
            revision: 2,
            title: "T".into(),
            handler: "files".into(),
            installed_at: jiff::Timestamp::now(),
            reboot_required: true,
        };
        s.commit_install(
            tx,
            &rec,
            &entry(
                "u",
                UpdateOperation::Installation,
                OperationResultCode::Succeeded,
            ),
        )
        .unwrap();
        assert_eq!(s.unfinished_txs().unwrap()[0].state, "committed");
        assert_eq!(s.owned("u").unwrap(), vec![e]);
        assert_eq!(s.installed().unwrap()[0].revision, 2);
        assert!(s.reboot_pending().unwrap());
        s.end_tx(tx).unwrap();
        assert!(s.unfinished_txs().unwrap().is_empty());
        assert_eq!(
            s.owned("u").unwrap().len(),
            1,
            "ownership outlives the journal"
        );
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
