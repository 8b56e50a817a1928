//! `weir store migrate` as an operator runs it: the real binary copies a redb state written by an
//! older Weir (`tests/fixtures/state-v0`, migrated to schema version 1 on open) into a real etcd
//! (one local member, unprivileged), refuses to copy into a target that already holds a state,
//! copies the etcd state back into an empty redb directory, and refuses `--from` and `--to`
//! naming the same back end. All three states are then read through the store interface and
//! must hold the same records, events and meta.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use weir::lab::etcd::{EtcdCluster, EtcdSpec};
use weir::store::copy::{is_empty, same};
use weir::store::{EtcdOptions, EtcdStore, RedbStore, Store};

const PREFIX: &str = "/m/";

/// A directory removed when dropped (success, failure or panic).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("weir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `weir --config CONFIG store migrate ARGS…`, with no `WEIR_*` variable of the caller's.
fn migrate(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--config")
        .arg(config)
        .args(["store", "migrate"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run weir")
}

fn exit_code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn migrate_copies_redb_to_etcd_and_back_and_refuses_a_target_with_state() {
    let etcd = EtcdCluster::start(EtcdSpec::local("migrate", 1)).unwrap();
    let scratch = Scratch::new("store-migrate");
    let state = scratch.0.join("state");
    let back = scratch.0.join("back");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&back).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v0/weir.redb");
    std::fs::copy(&fixture, state.join("weir.redb")).unwrap();
    let endpoints = etcd.endpoints();
    let config = scratch.0.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nstate_dir = {:?}\n\n[store]\nendpoints = [{}]\nprefix = {PREFIX:?}\n",
            state.display().to_string(),
            endpoints
                .iter()
                .map(|e| format!("{e:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .unwrap();

    // The same back end on both sides: a usage error, before anything is opened.
    let o = migrate(&config, &["--from", "redb", "--to", "redb"]);
    assert_eq!(exit_code(&o), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("same back end"),
        "{}",
        text(&o)
    );

    // A dry run says what it would copy and writes nothing.
    let o = migrate(&config, &["--from", "redb", "--to", "etcd", "--dry-run"]);
    assert_eq!(exit_code(&o), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("would copy"),
        "{}",
        text(&o)
    );

    let o = migrate(&config, &["--from", "redb", "--to", "etcd"]);
    assert_eq!(exit_code(&o), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("copied and checked"), "{}", text(&o));
    assert!(
        out.contains(PREFIX) && out.contains("2 runners"),
        "{}",
        text(&o)
    );

    // Again: the target holds the state now, and nothing is overwritten.
    let o = migrate(&config, &["--from", "redb", "--to", "etcd"]);
    assert_eq!(exit_code(&o), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already holds a Weir state") && err.contains(PREFIX),
        "{}",
        text(&o)
    );

    // Back into an empty directory: a logical backup of the etcd state.
    let o = migrate(
        &config,
        &[
            "--from",
            "etcd",
            "--to",
            "redb",
            "--state-dir",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(exit_code(&o), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("copied and checked"),
        "{}",
        text(&o)
    );
    assert!(back.join("weir.redb").exists());

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let original = RedbStore::open(&state).unwrap().load().await.unwrap();
        let restored = RedbStore::open(&back).unwrap().load().await.unwrap();
        let on_etcd = EtcdStore::connect(EtcdOptions {
            endpoints: endpoints.clone(),
            prefix: PREFIX.into(),
            writer: "checker".into(),
            timeout: Duration::from_secs(5),
            ..EtcdOptions::default()
        })
        .await
        .unwrap()
        .load()
        .await
        .unwrap();
        // The fixture's lab: two runners, three workloads, a reservation, their events.
        assert!(!is_empty(&original));
        assert_eq!(original.runners.len(), 2);
        assert_eq!(original.workloads.len(), 3);
        assert_eq!(original.reservations.len(), 1);
        assert!(!original.events.is_empty());
        same(&original, &on_etcd).unwrap_or_else(|d| panic!("redb → etcd: {d}"));
        same(&on_etcd, &restored).unwrap_or_else(|d| panic!("etcd → redb: {d}"));
        same(&original, &restored).unwrap_or_else(|d| panic!("redb → etcd → redb: {d}"));
    });
    drop(scratch);
    drop(etcd);
}
