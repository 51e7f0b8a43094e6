//! The schema version: a database written by the first release (schema 1, kept as a SQL
//! dump in `fixtures/schema-v1.sql`) is migrated in place; a newer one is refused.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use upkeep_store::{OwnedKind, Store, StoreError, SCHEMA_VERSION};

fn load(dir: &std::path::Path, sql: &str) {
    let c = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    c.execute_batch(sql).unwrap();
}

fn user_version(dir: &std::path::Path) -> i64 {
    rusqlite::Connection::open(dir.join("state.db"))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_schema_1_database_is_migrated_keeping_everything() {
    let d = tempfile::tempdir().unwrap();
    load(d.path(), include_str!("fixtures/schema-v1.sql"));
    assert_eq!(
        user_version(d.path()),
        0,
        "the first release set no version"
    );
    let s = Store::open(d.path()).unwrap();
    assert_eq!(user_version(d.path()), SCHEMA_VERSION);
    let id = "11111111-1111-4111-8111-111111111111";
    let inst = s.installed().unwrap();
    assert_eq!(inst.len(), 1);
    assert_eq!(inst[0].update_id, id);
    assert_eq!(inst[0].title, "App 1.0");
    assert!(inst[0].record.is_none(), "schema 1 kept no record");
    let owned = s.owned(id).unwrap();
    let conf = owned.iter().find(|o| o.path == "etc/app.conf").unwrap();
    assert_eq!(conf.kind, OwnedKind::File);
    assert_eq!(conf.original.as_deref(), Some("backups/1/0"));
    assert!(conf.digest.is_none());
    let opt = owned.iter().find(|o| o.path == "opt").unwrap();
    assert!(opt.kind == OwnedKind::Dir && opt.created && opt.mode == 0o755);
    assert_eq!(s.history_count().unwrap(), 2);
    assert_eq!(s.history(0, 1).unwrap()[0].previous_revision, None);
    drop(s);
    // Opening again changes nothing.
    let s = Store::open(d.path()).unwrap();
    assert_eq!(s.owned(id).unwrap(), owned);
}

#[test]
fn a_database_from_a_newer_agent_is_refused_and_left_alone() {
    let d = tempfile::tempdir().unwrap();
    drop(Store::open(d.path()).unwrap());
    load(d.path(), "PRAGMA user_version = 99;");
    let e = Store::open(d.path()).unwrap_err();
    assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("newer upkeep"), "{e}");
    assert_eq!(user_version(d.path()), 99);
}
