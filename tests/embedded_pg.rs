//! Integration tests for `readyd::embedded_pg`: real `initdb`, `pg_ctl` and PostgreSQL
//! processes in temporary directories under /tmp (short paths keep the Unix socket
//! path under its length limit).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use readyd::embedded_pg::{EmbeddedPgError, EmbeddedPostgres, find_binaries, find_binaries_under};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tempfile::TempDir;

/// A temporary directory under /tmp that the PostgreSQL user can enter (tempfile's
/// default 0700 would stop it when the tests run as root).
fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("rdpg")
        .permissions(fs::Permissions::from_mode(0o755))
        .tempdir_in("/tmp")
        .expect("create temp dir")
}

/// Stops whatever server runs from `<data_dir>/pg` when dropped, so a failing assertion
/// does not leave PostgreSQL running. Declare it after the `TempDir` so it drops first.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let cluster = self.0.join("pg");
        let (Ok(bins), Ok(meta)) = (find_binaries(), fs::metadata(&cluster)) else {
            return;
        };
        // Run as the cluster's owner (pg_ctl refuses root); errors (already stopped) are fine.
        let _ = std::process::Command::new(&bins.pg_ctl)
            .args(["stop", "-w", "-m", "immediate", "-D"])
            .arg(&cluster)
            .current_dir("/")
            .uid(meta.uid())
            .gid(meta.gid())
            .output();
    }
}

async fn connect(opts: &PgConnectOptions) -> PgConnection {
    PgConnection::connect_with(opts).await.expect("connect")
}

fn postmaster_pid(pg: &EmbeddedPostgres) -> String {
    let text = fs::read_to_string(pg.cluster_dir().join("postmaster.pid")).expect("pid file");
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn start_query_stop_restart_keeps_data() {
    let tmp = temp_dir();
    let _guard = StopOnDrop(tmp.path().to_path_buf());

    let pg = EmbeddedPostgres::start(tmp.path(), false)
        .await
        .expect("first start");
    let mut conn = connect(&pg.connect_options()).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);

    // Unix socket only: no TCP listener configured or active.
    let listen: String = sqlx::query_scalar("SHOW listen_addresses")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(listen, "");
    let conf = fs::read_to_string(pg.cluster_dir().join("readyd.conf")).unwrap();
    assert!(conf.contains("listen_addresses = ''"), "{conf}");
    let socket_dir = fs::metadata(pg.socket_dir()).unwrap();
    assert_eq!(socket_dir.permissions().mode() & 0o777, 0o700);
    assert!(pg.socket_dir().is_absolute());

    sqlx::query("CREATE TABLE kept (v text)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('hello')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    // The URL form works too (as sqlx parses it).
    let url_opts: PgConnectOptions = pg.url().parse().expect("url parses");
    let mut conn = connect(&url_opts).await;
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(db, "readyd");
    conn.close().await.unwrap();

    // Another database of the cluster.
    let mut conn = connect(&pg.connect_options_for("postgres")).await;
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(db, "postgres");
    conn.close().await.unwrap();

    pg.stop().await.expect("stop");
    pg.stop().await.expect("second stop is a no-op");
    assert!(!pg.cluster_dir().join("postmaster.pid").exists());
    drop(pg);

    let pg = EmbeddedPostgres::start(tmp.path(), false)
        .await
        .expect("second start");
    let mut conn = connect(&pg.connect_options()).await;
    let v: String = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "hello");
    conn.close().await.unwrap();
    pg.stop().await.expect("final stop");
}

#[tokio::test]
async fn adopts_a_cluster_left_running() {
    let tmp = temp_dir();
    let _guard = StopOnDrop(tmp.path().to_path_buf());

    let pg = EmbeddedPostgres::start(tmp.path(), false).await.unwrap();
    let mut conn = connect(&pg.connect_options()).await;
    // Two statements in one string: needs the simple-query protocol.
    sqlx::raw_sql("CREATE TABLE adopted (n int); INSERT INTO adopted VALUES (42)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let pid = postmaster_pid(&pg);
    // Simulate a killed readyd: the handle goes away, the server keeps running.
    drop(pg);

    let pg = EmbeddedPostgres::start(tmp.path(), false)
        .await
        .expect("adopting start");
    assert_eq!(postmaster_pid(&pg), pid, "the running server was reused");
    let mut conn = connect(&pg.connect_options()).await;
    let n: i32 = sqlx::query_scalar("SELECT n FROM adopted LIMIT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 42);
    conn.close().await.unwrap();
    pg.stop().await.unwrap();
}

#[tokio::test]
async fn starts_despite_stale_pid_files() {
    let tmp = temp_dir();
    let _guard = StopOnDrop(tmp.path().to_path_buf());

    let pg = EmbeddedPostgres::start(tmp.path(), false).await.unwrap();
    let pid_path = pg.cluster_dir().join("postmaster.pid");
    let lock_path = pg.socket_dir().join(".s.PGSQL.5432.lock");
    let saved: Vec<(PathBuf, Vec<u8>, u32, u32)> = [&pid_path, &lock_path]
        .into_iter()
        .map(|p| {
            let meta = fs::metadata(p).unwrap();
            (p.clone(), fs::read(p).unwrap(), meta.uid(), meta.gid())
        })
        .collect();
    let old_pid = postmaster_pid(&pg);
    pg.stop().await.unwrap();
    drop(pg);
    assert!(!pid_path.exists());
    // `pg_ctl stop` returns once postmaster.pid is gone, a moment before the process
    // exits; wait until that PID is really dead so the restored file is truly stale.
    let pid = nix::unistd::Pid::from_raw(old_pid.parse().unwrap());
    for _ in 0..100 {
        if nix::sys::signal::kill(pid, None).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Restore the files exactly as a crashed server would have left them.
    for (path, content, uid, gid) in &saved {
        fs::write(path, content).unwrap();
        std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).unwrap();
    }

    let pg = EmbeddedPostgres::start(tmp.path(), false)
        .await
        .expect("start over stale postmaster.pid");
    assert_ne!(postmaster_pid(&pg), old_pid);
    let mut conn = connect(&pg.connect_options()).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
    pg.stop().await.unwrap();
}

fn fake_exe(dir: &Path, mode: u32) {
    fs::create_dir_all(dir).unwrap();
    for name in ["initdb", "pg_ctl"] {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\nexit 1\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[test]
fn binary_search_reports_missing_and_prefers_newest() {
    let root = temp_dir();
    let err = find_binaries_under(&[root.path()]).unwrap_err();
    assert!(
        matches!(err, EmbeddedPgError::BinariesNotFound { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("set DATABASE_URL"), "{msg}");
    assert!(
        msg.contains("install the PostgreSQL server package (e.g. postgresql on Debian/Ubuntu)"),
        "{msg}"
    );

    let debian = root.path().join("usr/lib/postgresql");
    fake_exe(&debian.join("9/bin"), 0o755);
    fake_exe(&debian.join("16/bin"), 0o755);
    // Newer, but not executable: must be skipped.
    fake_exe(&debian.join("17/bin"), 0o644);
    // Not a version: ignored.
    fake_exe(&debian.join("main/bin"), 0o755);
    // Older RHEL layout and a source install: lower priority than 16.
    fake_exe(&root.path().join("usr/pgsql-15/bin"), 0o755);
    fake_exe(&root.path().join("usr/local/pgsql/bin"), 0o755);

    let found = find_binaries_under(&[root.path()]).unwrap();
    let want = fs::canonicalize(debian.join("16/bin")).unwrap();
    assert_eq!(found.initdb, want.join("initdb"));
    assert_eq!(found.pg_ctl, want.join("pg_ctl"));
}

#[tokio::test]
async fn too_long_socket_path_is_refused_before_anything_starts() {
    let tmp = temp_dir();
    let data_dir = tmp.path().join("x".repeat(100));
    let err = EmbeddedPostgres::start(&data_dir, false).await.unwrap_err();
    assert!(
        matches!(err, EmbeddedPgError::SocketPathTooLong { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("shorter --data-dir"), "{err}");
    assert!(!data_dir.join("pg").exists());
    assert!(!data_dir.join("pg-socket").exists());
}

#[tokio::test]
async fn unreachable_data_dir_is_refused_when_root() {
    if !nix::unistd::geteuid().is_root() {
        return; // only root switches to an unprivileged PostgreSQL user
    }
    // Mode 0700 keeps every other user out.
    let tmp = tempfile::Builder::new()
        .prefix("rdpg")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = tmp.path().join("d");
    let err = EmbeddedPostgres::start(&data_dir, false).await.unwrap_err();
    assert!(
        matches!(err, EmbeddedPgError::NotTraversable { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
    assert!(msg.contains("--data-dir"), "{msg}");
    assert!(!data_dir.join("pg").exists());
}

/// Gives `path` and everything under it to `uid`:`gid` (no symlinks followed).
fn chown_all(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
    if fs::symlink_metadata(path).expect("inspect").is_dir() {
        for entry in fs::read_dir(path).expect("read dir") {
            chown_all(&entry.expect("entry").path(), uid, gid);
        }
    }
}

/// The real uid of process `pid`.
fn uid_of(pid: &str) -> u32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .expect("a Uid line")
}

/// A cluster an older readyd ran as `nobody` (left running, as after a
/// SIGKILL) is stopped, given to a user of its own and started as that
/// user: with trust authentication, any other `nobody` process could
/// otherwise connect as superuser.
#[tokio::test]
async fn a_cluster_run_as_nobody_is_taken_from_nobody() {
    if !nix::unistd::geteuid().is_root() {
        return; // only root picks the PostgreSQL user
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").expect("look up nobody") else {
        return;
    };
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let tmp = temp_dir();
    let _guard = StopOnDrop(tmp.path().to_path_buf());
    let pg = EmbeddedPostgres::start(tmp.path(), false)
        .await
        .expect("start");
    let mut conn = connect(&pg.connect_options()).await;
    sqlx::raw_sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .execute(&mut conn)
        .await
        .expect("write");
    conn.close().await.expect("close");
    pg.stop().await.expect("stop");
    drop(pg);

    // As an older readyd left it: everything nobody's, the server running as nobody.
    for path in ["pg", "pg-socket", "pg.log"] {
        chown_all(&tmp.path().join(path), uid, gid);
    }
    let bins = find_binaries().expect("binaries");
    let started = std::process::Command::new(&bins.pg_ctl)
        .args(["start", "-w", "-D"])
        .arg(tmp.path().join("pg"))
        .arg("-l")
        .arg(tmp.path().join("pg.log"))
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .output()
        .expect("pg_ctl start as nobody");
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );

    let pg = EmbeddedPostgres::start(tmp.path(), false)
        .await
        .expect("start again");
    let server_uid = uid_of(&postmaster_pid(&pg));
    assert_ne!(server_uid, uid, "the server runs as nobody");
    assert_ne!(server_uid, 0);
    let cluster_owner = fs::metadata(pg.cluster_dir()).expect("cluster").uid();
    assert_eq!(cluster_owner, server_uid, "the cluster is its user's");
    let socket_dir = fs::metadata(pg.socket_dir()).expect("socket dir");
    assert_eq!(socket_dir.uid(), server_uid);
    assert_eq!(socket_dir.permissions().mode() & 0o777, 0o700);
    let mut conn = connect(&pg.connect_options()).await;
    let n: i32 = sqlx::query_scalar("SELECT n FROM kept")
        .fetch_one(&mut conn)
        .await
        .expect("the data is kept");
    assert_eq!(n, 7);
    conn.close().await.expect("close");
    pg.stop().await.expect("stop");
}
