//! A private PostgreSQL cluster for zero-setup runs and tests.
//!
//! When no `DATABASE_URL` is configured, `readyd serve` runs its own PostgreSQL
//! inside its data directory. This module owns everything about that cluster:
//! finding the server binaries, creating the cluster on first run, starting it
//! (or adopting one left running by a killed readyd), dropping privileges when
//! readyd runs as root, and stopping it again.
//!
//! Layout inside the data directory:
//!
//! ```text
//! <data_dir>/pg/           the cluster (PGDATA), mode 0700, owned by the PostgreSQL user
//! <data_dir>/pg-socket/    the Unix socket directory, mode 0700, same owner
//! <data_dir>/pg.log        the server log (`pg_ctl -l`); `pg.log.old` after rotation
//! ```
//!
//! The server listens only on a Unix socket in `pg-socket/` (no TCP at all), and
//! only its owner (and root) can enter that directory, so `trust` authentication
//! admits nobody else. That owner is therefore a user of the cluster's own when
//! readyd runs as root (see `plan_user`), never a shared one such as `nobody`.
//! readyd's settings live in `pg/readyd.conf`, which `postgresql.conf` includes
//! and which is rewritten at every start (so a moved data directory keeps
//! working).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

/// The database readyd uses inside the embedded cluster.
pub const DATABASE: &str = "readyd";
/// The cluster's superuser (created by `initdb -U`); authentication is `trust`.
pub const SUPERUSER: &str = "readyd";
/// The port number; with no TCP listener it only names the socket file `.s.PGSQL.<port>`.
pub const PORT: u16 = 5432;

/// Name of readyd's own configuration file inside the cluster directory.
const READYD_CONF: &str = "readyd.conf";
/// The line appended to `postgresql.conf` so that it reads `readyd.conf`.
const INCLUDE_LINE: &str = "include_if_exists = 'readyd.conf'";
/// Seconds `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// The server log is rotated (renamed to `pg.log.old`) at start once it exceeds this size.
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// How many trailing lines of command output / server log go into error messages.
const TAIL_LINES: usize = 20;
/// How long a server that `pg_ctl status` reports as running may take to open its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);
/// How long to keep retrying the first connection (an adopted server may still be recovering).
const CONNECT_RETRY: Duration = Duration::from_secs(30);

/// Longest Unix socket path the OS accepts (`sizeof(sun_path)` minus the NUL byte).
#[cfg(any(target_os = "linux", target_os = "android"))]
const MAX_SOCKET_PATH: usize = 107;
/// Longest Unix socket path the OS accepts (`sizeof(sun_path)` minus the NUL byte).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const MAX_SOCKET_PATH: usize = 103;

const INSTALL_HINT: &str = "set DATABASE_URL to use an existing PostgreSQL, or install the \
     PostgreSQL server package (e.g. postgresql on Debian/Ubuntu)";

/// Errors from finding, creating, starting or stopping the embedded PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    /// `initdb` and `pg_ctl` were found neither in PATH nor in the usual install directories.
    #[error(
        "PostgreSQL server programs (initdb, pg_ctl) not found (searched {searched}); \
         {INSTALL_HINT}"
    )]
    BinariesNotFound {
        /// Human-readable list of what was searched.
        searched: String,
    },

    /// A filesystem operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The data directory path cannot be used by PostgreSQL tooling.
    #[error(
        "data directory {} cannot be used for the embedded PostgreSQL: {reason}; \
         choose another --data-dir or set DATABASE_URL",
        path.display()
    )]
    UnusablePath {
        /// The offending path.
        path: PathBuf,
        /// Why it is unusable.
        reason: &'static str,
    },

    /// The Unix socket path would exceed the OS limit.
    #[error(
        "the PostgreSQL socket path {} is {len} bytes, over the {max}-byte limit for Unix \
         sockets; use a shorter --data-dir (e.g. under /var/lib or /tmp) or set DATABASE_URL",
        path.display()
    )]
    SocketPathTooLong {
        /// The full socket file path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The maximum length.
        max: usize,
    },

    /// readyd runs as root but no unprivileged user is available to run PostgreSQL.
    #[error(
        "readyd runs as root but PostgreSQL refuses to, and {detail}; create the system user \
         `readyd-pg` (e.g. `useradd --system --user-group readyd-pg`) or a `postgres` user, \
         run readyd as an unprivileged user, or set DATABASE_URL"
    )]
    NoUnprivilegedUser {
        /// What exactly is missing.
        detail: String,
    },

    /// The PostgreSQL user cannot reach the data directory.
    #[error(
        "PostgreSQL runs as user `{user}` (readyd runs as root), but that user cannot enter \
         {} (mode {mode:o}, owner uid {owner}); use a --data-dir that user can reach (e.g. \
         under /var/lib or /tmp), make the directory traversable (chmod o+x), or set \
         DATABASE_URL",
        dir.display()
    )]
    NotTraversable {
        /// The PostgreSQL user.
        user: String,
        /// The first directory (from `/` down) the user cannot enter.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
    },

    /// postmaster.pid names a live process, but it never opened the socket.
    #[error(
        "{}/postmaster.pid names a live process (pid {pid}), but no server socket {} \
         appeared; if that process is a stuck PostgreSQL, stop it (pg_ctl stop -D {} as its \
         owner); if it is not PostgreSQL at all (the PID was reused), delete postmaster.pid; \
         then start readyd again",
        cluster.display(),
        socket.display(),
        cluster.display()
    )]
    Unresponsive {
        /// The cluster directory.
        cluster: PathBuf,
        /// The expected socket file.
        socket: PathBuf,
        /// The PID from postmaster.pid.
        pid: String,
    },

    /// `<data_dir>/pg` exists and is not empty but is not a PostgreSQL cluster.
    #[error(
        "{} exists but is not a PostgreSQL cluster (no PG_VERSION); move it away or \
         choose another --data-dir",
        path.display()
    )]
    NotACluster {
        /// The cluster directory.
        path: PathBuf,
    },

    /// A program could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `initdb` or `pg_ctl` exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its output and, where relevant, of the server log.
        output: String,
    },

    /// Connecting to the started server or creating the `readyd` database failed.
    #[error(
        "embedded PostgreSQL (socket directory {}) started, but {action} failed: {source}\n\
         --- last lines of the server log ---\n{log_tail}",
        socket_dir.display()
    )]
    Database {
        /// What was being done.
        action: &'static str,
        /// The socket directory.
        socket_dir: PathBuf,
        /// The last lines of the server log.
        log_tail: String,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },

    /// A blocking preparation task panicked or was cancelled.
    #[error("embedded PostgreSQL preparation task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedPgError + use<> {
    let path = path.to_path_buf();
    move |source| EmbeddedPgError::Io {
        action,
        path,
        source,
    }
}

// ---------------------------------------------------------------------------
// Finding the binaries
// ---------------------------------------------------------------------------

/// The PostgreSQL programs readyd runs (both from the same directory, so versions match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// Path of `initdb`.
    pub initdb: PathBuf,
    /// Path of `pg_ctl` (which finds `postgres` next to itself).
    pub pg_ctl: PathBuf,
}

impl PgBinaries {
    /// Returns the binaries if `dir` holds executable `initdb` and `pg_ctl`.
    ///
    /// Paths are canonicalized: `pg_ctl` locates `postgres` relative to its real
    /// location, and symlinked PATH entries (e.g. `/usr/local/bin/pg_ctl`) are common.
    fn in_dir(dir: &Path) -> Option<Self> {
        let initdb = dir.join("initdb");
        let pg_ctl = dir.join("pg_ctl");
        if is_executable(&initdb) && is_executable(&pg_ctl) {
            Some(Self {
                initdb: fs::canonicalize(&initdb).unwrap_or(initdb),
                pg_ctl: fs::canonicalize(&pg_ctl).unwrap_or(pg_ctl),
            })
        } else {
            None
        }
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `initdb` and `pg_ctl`: in a PATH directory holding both, else in the usual
/// install directories under `/` (see [`find_binaries_under`]).
pub fn find_binaries() -> Result<PgBinaries, EmbeddedPgError> {
    if let Some(path) = std::env::var_os("PATH")
        && let Some(found) = find_binaries_in_path(&path)
    {
        return Ok(found);
    }
    find_binaries_under(&[Path::new("/")]).map_err(|e| match e {
        EmbeddedPgError::BinariesNotFound { searched } => EmbeddedPgError::BinariesNotFound {
            searched: format!("PATH, {searched}"),
        },
        other => other,
    })
}

/// Returns the first directory of a PATH-style list that holds both `initdb` and `pg_ctl`.
pub fn find_binaries_in_path(path: &std::ffi::OsStr) -> Option<PgBinaries> {
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .find_map(|dir| PgBinaries::in_dir(&dir))
}

/// Searches the usual PostgreSQL install directories below each of `roots`
/// (normally just `/`; tests pass a temporary directory):
///
/// - `<root>/usr/lib/postgresql/<N>/bin` (Debian/Ubuntu)
/// - `<root>/usr/pgsql-<N>/bin` (RHEL and derivatives)
/// - `<root>/opt/homebrew/opt/postgresql@<N>/bin`, `<root>/usr/local/opt/postgresql@<N>/bin` (Homebrew)
/// - `<root>/usr/local/pgsql/bin` (source installs)
///
/// Versioned directories come first, newest version first (compared numerically,
/// so 16 beats 9 and 9.6 beats 9.5), then the unversioned one.
pub fn find_binaries_under(roots: &[&Path]) -> Result<PgBinaries, EmbeddedPgError> {
    // (parent directory, entry-name prefix, sub-path below the entry)
    const VERSIONED: &[(&str, &str, &str)] = &[
        ("usr/lib/postgresql", "", "bin"),
        ("usr", "pgsql-", "bin"),
        ("opt/homebrew/opt", "postgresql@", "bin"),
        ("usr/local/opt", "postgresql@", "bin"),
    ];
    const UNVERSIONED: &[&str] = &["usr/local/pgsql/bin"];

    let mut versioned: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    let mut unversioned: Vec<PathBuf> = Vec::new();
    let mut searched: Vec<String> = Vec::new();
    for root in roots {
        for (parent, prefix, sub) in VERSIONED {
            let parent = root.join(parent);
            searched.push(format!("{}/{prefix}<N>/{sub}", parent.display()));
            // A missing or unreadable directory simply contributes no candidates.
            let Ok(entries) = fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(version) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(prefix))
                    .and_then(parse_version)
                else {
                    continue;
                };
                versioned.push((version, entry.path().join(sub)));
            }
        }
        for dir in UNVERSIONED {
            let dir = root.join(dir);
            searched.push(dir.display().to_string());
            unversioned.push(dir);
        }
    }
    // Stable sort: for equal versions the order of VERSIONED (and of roots) decides.
    versioned.sort_by(|a, b| b.0.cmp(&a.0));
    versioned
        .into_iter()
        .map(|(_, dir)| dir)
        .chain(unversioned)
        .find_map(|dir| PgBinaries::in_dir(&dir))
        .ok_or_else(|| EmbeddedPgError::BinariesNotFound {
            searched: searched.join(", "),
        })
}

/// Parses "16" or "9.6" into comparable numeric components; anything else is not a version.
fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|part| part.parse::<u32>().ok()).collect()
}

// ---------------------------------------------------------------------------
// The PostgreSQL OS user
// ---------------------------------------------------------------------------

/// The OS user that runs `initdb`, `pg_ctl` and thus the server.
#[derive(Debug, Clone)]
struct PgUser {
    name: String,
    uid: Uid,
    gid: Gid,
    home: PathBuf,
    /// True when readyd is root and must switch to this user for child processes.
    switch: bool,
}

impl PgUser {
    fn from_nix(user: User, switch: bool) -> Self {
        Self {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            home: user.dir,
            switch,
        }
    }

    /// Picks the user (see [`plan_user`]) and says whether the existing
    /// cluster must be given to it first. Creates [`DEDICATED_USER`] when
    /// the plan says so.
    fn choose(cluster_dir: &Path) -> Result<(Self, bool), EmbeddedPgError> {
        let lookup_err = |e: nix::Error| EmbeddedPgError::NoUnprivilegedUser {
            detail: format!("looking up users failed: {e}"),
        };
        let euid = nix::unistd::geteuid();
        let cluster_owner = if cluster_dir.join("PG_VERSION").exists()
            && let Ok(meta) = fs::metadata(cluster_dir)
        {
            let owner = User::from_uid(Uid::from_raw(meta.uid())).map_err(lookup_err)?;
            Some((meta.uid(), owner.map(|user| user.name)))
        } else {
            None
        };
        let mut existing_users = Vec::new();
        for name in [DEDICATED_USER, "postgres"] {
            if User::from_name(name).map_err(lookup_err)?.is_some() {
                existing_users.push(name.to_owned());
            }
        }
        let facts = UserFacts {
            is_root: euid.is_root(),
            cluster_owner,
            existing_users,
        };
        let by_name = |name: &str| -> Result<Self, EmbeddedPgError> {
            let user = User::from_name(name).map_err(lookup_err)?.ok_or_else(|| {
                EmbeddedPgError::NoUnprivilegedUser {
                    detail: format!("the user `{name}` does not exist"),
                }
            })?;
            Ok(Self::from_nix(user, true))
        };
        match plan_user(&facts) {
            UserPlan::Current => {
                let user = User::from_uid(euid).map_err(lookup_err)?.ok_or_else(|| {
                    EmbeddedPgError::NoUnprivilegedUser {
                        detail: format!("the current uid {euid} has no passwd entry"),
                    }
                })?;
                // PostgreSQL itself refuses to run without a passwd entry, hence the check.
                Ok((Self::from_nix(user, false), false))
            }
            UserPlan::Existing { name, reown } => Ok((by_name(&name)?, reown)),
            UserPlan::CreateDedicated { reown } => {
                create_dedicated_user()
                    .map_err(|detail| EmbeddedPgError::NoUnprivilegedUser { detail })?;
                tracing::info!(
                    user = DEDICATED_USER,
                    "created the system user that runs the private PostgreSQL"
                );
                Ok((by_name(DEDICATED_USER)?, reown))
            }
            UserPlan::Refuse(detail) => Err(EmbeddedPgError::NoUnprivilegedUser { detail }),
        }
    }

    /// Gives `path` to this user (only when running as root; otherwise we own it already).
    fn chown(&self, path: &Path) -> Result<(), EmbeddedPgError> {
        if self.switch {
            std::os::unix::fs::lchown(path, Some(self.uid.as_raw()), Some(self.gid.as_raw()))
                .map_err(io_err("change the owner of", path))?;
        }
        Ok(())
    }

    /// Checks, from mode bits, that this user can enter `dir` and all its ancestors.
    ///
    /// Only the primary group counts: when std switches uid as root it also clears the
    /// supplementary groups (`setgroups(0)`), so the child has no others.
    fn check_traversable(&self, dir: &Path) -> Result<(), EmbeddedPgError> {
        let mut chain: Vec<&Path> = dir.ancestors().collect();
        chain.reverse(); // report the top-most blocking directory first
        for d in chain {
            let meta = fs::metadata(d).map_err(io_err("inspect", d))?;
            let mode = meta.permissions().mode();
            let bit = if meta.uid() == self.uid.as_raw() {
                0o100
            } else if meta.gid() == self.gid.as_raw() {
                0o010
            } else {
                0o001
            };
            if mode & bit == 0 {
                return Err(EmbeddedPgError::NotTraversable {
                    user: self.name.clone(),
                    dir: d.to_path_buf(),
                    mode: mode & 0o7777,
                    owner: meta.uid(),
                });
            }
        }
        Ok(())
    }
}

/// The system user readyd creates to run its private PostgreSQL when it runs
/// as root and neither it nor a `postgres` user exists.
pub const DEDICATED_USER: &str = "readyd-pg";

/// Whether a user is shared by unrelated programs (`nobody`): a cluster
/// with `trust` authentication run by it would let every one of them in as
/// superuser (the socket directory is only closed to other users).
fn is_shared_user(uid: u32, name: Option<&str>) -> bool {
    uid == 65534 || matches!(name, Some("nobody" | "nfsnobody"))
}

/// What is known when picking the user that runs the private cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UserFacts {
    /// Whether readyd runs as root.
    is_root: bool,
    /// The uid owning an existing cluster, and its name when it has a
    /// passwd entry; None when there is no cluster yet.
    cluster_owner: Option<(u32, Option<String>)>,
    /// Which of [`DEDICATED_USER`] and `postgres` exist.
    existing_users: Vec<String>,
}

/// Who runs the private cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UserPlan {
    /// readyd's own user (readyd is not root).
    Current,
    /// This existing user; `reown`: give it the existing cluster first (it
    /// belongs to root or to a shared user).
    Existing { name: String, reown: bool },
    /// Create [`DEDICATED_USER`] and run as it; `reown` as above.
    CreateDedicated { reown: bool },
    /// No user may run it; the detail says why.
    Refuse(String),
}

/// Picks the user that runs the private cluster, from facts only (no I/O).
///
/// Not root: readyd's own user. Root (PostgreSQL refuses to run as root):
/// the owner of an existing cluster, unless that is root or a shared user
/// such as `nobody` (never: any other process of that user could connect
/// as superuser), in which case the cluster is given to the user a new
/// cluster gets: [`DEDICATED_USER`] if it exists, else `postgres` if it
/// exists, else [`DEDICATED_USER`], created.
fn plan_user(facts: &UserFacts) -> UserPlan {
    if !facts.is_root {
        return UserPlan::Current;
    }
    let reown = match &facts.cluster_owner {
        None => false,
        Some((0, _)) => true,
        Some((uid, name)) if is_shared_user(*uid, name.as_deref()) => true,
        Some((_, Some(name))) => {
            return UserPlan::Existing {
                name: name.clone(),
                reown: false,
            };
        }
        Some((uid, None)) => {
            return UserPlan::Refuse(format!(
                "the owner (uid {uid}) of the existing cluster has no passwd entry"
            ));
        }
    };
    let exists = |name: &str| facts.existing_users.iter().any(|user| user == name);
    for name in [DEDICATED_USER, "postgres"] {
        if exists(name) {
            return UserPlan::Existing {
                name: name.to_owned(),
                reown,
            };
        }
    }
    UserPlan::CreateDedicated { reown }
}

/// Creates [`DEDICATED_USER`] as a system user with its own group, no home
/// and no login shell (`useradd`, or BusyBox's `adduser`); succeeds too
/// when another process created it meanwhile.
fn create_dedicated_user() -> Result<(), String> {
    let attempts: [(&str, &[&str]); 4] = [
        (
            "useradd",
            &[
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                DEDICATED_USER,
            ],
        ),
        (
            "/usr/sbin/useradd",
            &[
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                DEDICATED_USER,
            ],
        ),
        (
            "adduser",
            &[
                "-S",
                "-D",
                "-H",
                "-h",
                "/nonexistent",
                "-s",
                "/sbin/nologin",
                DEDICATED_USER,
            ],
        ),
        (
            "/usr/sbin/adduser",
            &[
                "-S",
                "-D",
                "-H",
                "-h",
                "/nonexistent",
                "-s",
                "/sbin/nologin",
                DEDICATED_USER,
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (program, arguments) in attempts {
        match std::process::Command::new(program)
            .args(arguments)
            .stdin(Stdio::null())
            .output()
        {
            Ok(output) if output.status.success() => return Ok(()),
            Ok(output) => failures.push(format!(
                "`{program}` failed ({}): {}",
                output.status,
                tail_lines(&String::from_utf8_lossy(&output.stderr), 3)
            )),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => failures.push(format!("`{program}` could not run: {err}")),
        }
        // Another readyd may have created it at the same moment.
        if User::from_name(DEDICATED_USER).is_ok_and(|user| user.is_some()) {
            return Ok(());
        }
    }
    if failures.is_empty() {
        failures.push("neither `useradd` nor `adduser` is installed".to_owned());
    }
    Err(format!(
        "no `postgres` or `{DEDICATED_USER}` user exists and creating `{DEDICATED_USER}` failed: {}",
        failures.join("; ")
    ))
}

/// Stops a server that may be running from `cluster` as its current owner
/// `uid`/`gid` (before the cluster is given to another user); a stopped
/// cluster is fine.
fn stop_as_owner(bins: &PgBinaries, cluster: &Path, uid: u32, gid: u32) {
    if !cluster.join("postmaster.pid").exists() {
        return;
    }
    let stopped = std::process::Command::new(&bins.pg_ctl)
        .args(["stop", "-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", "fast", "-D"])
        .arg(cluster)
        .current_dir("/")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .uid(uid)
        .gid(gid)
        .output();
    if let Err(err) = stopped {
        tracing::warn!(cluster = %cluster.display(), error = %err, "could not stop the embedded PostgreSQL before giving it to its new user");
    }
}

/// Creates `dir` if missing, gives it to `user` and restricts it to mode 0700.
fn ensure_private_dir(dir: &Path, user: &PgUser) -> Result<(), EmbeddedPgError> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create directory", dir)(e)),
    }
    user.chown(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err("set permissions of", dir))
}

/// Gives a whole tree to `user` without following symlinks (used when root finds a
/// root-owned cluster, e.g. one copied by root, which PostgreSQL would refuse to use).
fn chown_tree(path: &Path, user: &PgUser) -> Result<(), EmbeddedPgError> {
    user.chown(path)?;
    let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err("read directory", path))? {
            let entry = entry.map_err(io_err("read directory", path))?;
            chown_tree(&entry.path(), user)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Running initdb / pg_ctl
// ---------------------------------------------------------------------------

/// Everything needed to run PostgreSQL programs for one cluster.
#[derive(Debug, Clone)]
struct Runner {
    bins: PgBinaries,
    user: PgUser,
    /// Working directory for children: one the PostgreSQL user can surely enter
    /// (readyd's own cwd may be e.g. /root).
    cwd: PathBuf,
}

struct CmdOutput {
    status: ExitStatus,
    text: String,
}

impl Runner {
    async fn run(&self, program: &Path, args: &[OsString]) -> Result<CmdOutput, EmbeddedPgError> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Predictable, untranslated messages; initdb also needs a valid locale.
            .env("LC_ALL", "C")
            // Own process group: a Ctrl-C aimed at readyd in a terminal must not also
            // hit the server (readyd stops it in order during shutdown).
            .process_group(0);
        // PG* variables (PGDATA, PGPORT, PGOPTIONS, ...) would change what the programs do.
        for (key, _) in std::env::vars_os() {
            if key.as_bytes().starts_with(b"PG") {
                cmd.env_remove(&key);
            }
        }
        if self.user.switch {
            let home = if self.user.home.is_dir() {
                self.user.home.clone()
            } else {
                self.cwd.clone()
            };
            cmd.uid(self.user.uid.as_raw())
                .gid(self.user.gid.as_raw())
                .env("HOME", home)
                .env("USER", &self.user.name)
                .env("LOGNAME", &self.user.name);
        }
        let output = cmd
            .output()
            .await
            .map_err(|source| EmbeddedPgError::Spawn {
                command: command_line(program, args),
                source,
            })?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok(CmdOutput {
            status: output.status,
            text,
        })
    }

    /// Runs a program and turns a non-zero exit into [`EmbeddedPgError::Command`],
    /// adding the tail of the server log when given (see [`log_excerpt`]).
    async fn run_checked(
        &self,
        program: &Path,
        args: &[OsString],
        log: Option<(&Path, u64)>,
    ) -> Result<(), EmbeddedPgError> {
        let out = self.run(program, args).await?;
        if out.status.success() {
            return Ok(());
        }
        Err(command_error(program, args, &out, log))
    }
}

fn command_error(
    program: &Path,
    args: &[OsString],
    out: &CmdOutput,
    log: Option<(&Path, u64)>,
) -> EmbeddedPgError {
    let mut output = tail_lines(&out.text, TAIL_LINES);
    if let Some((path, from)) = log {
        let excerpt = log_excerpt(path, from);
        if !excerpt.is_empty() {
            let _ = write!(
                output,
                "\n--- last lines of {} ---\n{excerpt}",
                path.display()
            );
        }
    }
    EmbeddedPgError::Command {
        command: command_line(program, args),
        status: out.status,
        output,
    }
}

fn command_line(program: &Path, args: &[OsString]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            let _ = write!(line, " '{arg}'");
        } else {
            let _ = write!(line, " {arg}");
        }
    }
    line
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last lines of the server log written since byte offset `from` (its size when
/// the failed operation began, so older runs do not bury the cause), or of the whole
/// log if nothing was written since.
fn log_excerpt(path: &Path, from: u64) -> String {
    let mut text = read_tail(path, from);
    if text.trim().is_empty() {
        text = read_tail(path, 0);
    }
    tail_lines(&text, TAIL_LINES)
}

/// Size of a file, 0 if it cannot be read (e.g. not created yet).
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Reads at most the last 16 KiB of a (possibly large) log file, starting no earlier
/// than byte `from`; empty if unreadable.
fn read_tail(path: &Path, from: u64) -> String {
    const MAX: u64 = 16 * 1024;
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(MAX));
    if start > len || file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn args<const N: usize>(items: [&dyn AsRef<std::ffi::OsStr>; N]) -> Vec<OsString> {
    items.iter().map(|a| a.as_ref().to_os_string()).collect()
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Quotes a value for postgresql.conf: single quotes are doubled and, because the
/// config lexer also processes backslash escapes inside quoted strings, backslashes too.
fn conf_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The contents of `readyd.conf`.
fn render_conf(socket_dir: &str, durable: bool) -> String {
    let mut settings: Vec<(&str, String)> = vec![
        // Unix socket only, inside the data dir; nothing on the network.
        ("listen_addresses", String::new()),
        ("port", PORT.to_string()),
        ("unix_socket_directories", socket_dir.to_string()),
        ("unix_socket_permissions", "0700".to_string()),
        // A sidecar: keep the footprint small.
        ("max_connections", "50".to_string()),
        ("shared_buffers", "16MB".to_string()),
        ("max_wal_size", "256MB".to_string()),
    ];
    if !durable {
        // Tests: speed over crash safety (data may be lost on an OS crash).
        settings.push(("fsync", "off".to_string()));
        settings.push(("synchronous_commit", "off".to_string()));
        settings.push(("full_page_writes", "off".to_string()));
    }
    let mut out = String::from(
        "# Managed by readyd: rewritten at every start of the embedded PostgreSQL.\n\
         # Changes made here will be lost; put your own settings in postgresql.conf\n\
         # above its include_if_exists line (settings read later win).\n",
    );
    for (name, value) in settings {
        let _ = writeln!(out, "{name} = {}", conf_quote(&value));
    }
    out
}

/// Appends the include line to `postgresql.conf` unless it is already there.
fn ensure_include(cluster: &Path) -> Result<(), EmbeddedPgError> {
    let conf = cluster.join("postgresql.conf");
    let text = fs::read_to_string(&conf).map_err(io_err("read", &conf))?;
    if text.lines().any(|l| l.trim() == INCLUDE_LINE) {
        return Ok(());
    }
    let mut addition = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        addition.push('\n');
    }
    addition.push_str("\n# Added by readyd: its settings live in readyd.conf.\n");
    addition.push_str(INCLUDE_LINE);
    addition.push('\n');
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .map_err(io_err("open", &conf))?;
    io::Write::write_all(&mut file, addition.as_bytes()).map_err(io_err("write", &conf))
}

/// Writes `contents` to `path` atomically (temp file + rename), owned by `user`, mode 0600.
fn write_owned(path: &Path, contents: &str, user: &PgUser) -> Result<(), EmbeddedPgError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).map_err(io_err("write", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .map_err(io_err("set permissions of", &tmp))?;
    user.chown(&tmp)?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))
}

/// Reads `postmaster.pid`: returns (socket directory, listen addresses), lines 5 and 6.
fn pidfile_sockets(cluster: &Path) -> Option<(String, String)> {
    let text = fs::read_to_string(cluster.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some((
        lines.get(4)?.trim().to_string(),
        lines
            .get(5)
            .map(|l| l.trim().to_string())
            .unwrap_or_default(),
    ))
}

// ---------------------------------------------------------------------------
// EmbeddedPostgres
// ---------------------------------------------------------------------------

/// A PostgreSQL cluster owned by readyd, living in `<data_dir>/pg`.
///
/// Dropping the handle does **not** stop the server (the next [`start`](Self::start)
/// on the same directory adopts it); call [`stop`](Self::stop) for an orderly shutdown.
/// Only one readyd should use a given data directory at a time.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    runner: Runner,
    cluster_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    /// Serializes `stop` and remembers that it succeeded.
    stopped: tokio::sync::Mutex<bool>,
    /// The server was already running when this handle was made (another
    /// readyd on the same data dir, or one that was killed).
    adopted: bool,
}

/// Result of the blocking preparation phase of [`EmbeddedPostgres::start`].
struct Prepared {
    data_dir: PathBuf,
    runner: Runner,
    cluster_dir: PathBuf,
    socket_dir: PathBuf,
    socket_dir_str: String,
    log_file: PathBuf,
}

impl EmbeddedPostgres {
    /// Finds the binaries, creates the cluster in `<data_dir>/pg` on first run, starts it
    /// (or adopts one already running from that directory, e.g. after readyd was SIGKILLed),
    /// and makes sure the database `readyd` exists.
    ///
    /// `durable = false` (tests) uses `initdb --no-sync` and `fsync = off` for speed;
    /// `durable = true` is for real runs. The setting is reapplied at every start.
    pub async fn start(data_dir: &Path, durable: bool) -> Result<Self, EmbeddedPgError> {
        let data_dir = data_dir.to_path_buf();
        let p = tokio::task::spawn_blocking(move || prepare(&data_dir)).await??;
        let pg = EmbeddedPostgres {
            runner: p.runner,
            cluster_dir: p.cluster_dir,
            socket_dir: p.socket_dir,
            log_file: p.log_file,
            stopped: tokio::sync::Mutex::new(false),
            adopted: false,
        };
        let conf = render_conf(&p.socket_dir_str, durable);
        let conf_path = pg.cluster_dir.join(READYD_CONF);

        let mut running = false;
        // Where this start's server log lines begin, for error messages.
        let mut log_from = file_len(&pg.log_file);
        if pg.cluster_dir.join("PG_VERSION").exists() {
            running = pg.is_running().await?;
            if running {
                // Adopt only a server that runs with exactly our settings; otherwise
                // (settings changed, data dir moved, ...) restart it to apply them.
                let current = fs::read_to_string(&conf_path).unwrap_or_default();
                let sockets_ok = pidfile_sockets(&pg.cluster_dir)
                    .is_some_and(|(dir, listen)| dir == p.socket_dir_str && listen.is_empty());
                if sockets_ok {
                    // "Running" may also be a server still starting or just exiting.
                    running = pg.wait_for_socket_or_exit().await?;
                }
                if !running {
                    // It exited meanwhile: start it below like any stopped cluster.
                } else if current == conf && sockets_ok {
                    tracing::info!(cluster = %pg.cluster_dir.display(),
                        "adopting already running embedded PostgreSQL");
                } else {
                    tracing::warn!(cluster = %pg.cluster_dir.display(),
                        "restarting running embedded PostgreSQL to apply readyd's settings");
                    pg.pg_ctl_stop().await?;
                    running = false;
                }
            }
        } else {
            pg.init_cluster(&p.data_dir, durable).await?;
        }

        if !running {
            let (cluster, user) = (pg.cluster_dir.clone(), pg.runner.user.clone());
            let log = pg.log_file.clone();
            tokio::task::spawn_blocking(move || -> Result<(), EmbeddedPgError> {
                ensure_include(&cluster)?;
                write_owned(&cluster.join(READYD_CONF), &conf, &user)?;
                prepare_log(&log, &user)
            })
            .await??;
            tracing::info!(cluster = %pg.cluster_dir.display(), "starting embedded PostgreSQL");
            log_from = file_len(&pg.log_file);
            let args = args([
                &"start",
                &"-w",
                &"-t",
                &PG_CTL_TIMEOUT_SECS,
                &"-D",
                &pg.cluster_dir,
                &"-l",
                &pg.log_file,
            ]);
            pg.runner
                .run_checked(
                    &pg.runner.bins.pg_ctl,
                    &args,
                    Some((&pg.log_file, log_from)),
                )
                .await?;
        }

        if let Err(e) = pg.ensure_database(log_from).await {
            if !running {
                // We started it for nothing: do not leave it behind (best effort).
                let _ = pg.pg_ctl_stop().await;
            }
            return Err(e);
        }
        Ok(EmbeddedPostgres {
            adopted: running,
            ..pg
        })
    }

    /// Stops the cluster, logging a failure instead of returning it: for
    /// shutdown paths that have nothing better to do with the error.
    pub async fn stop_or_warn(&self) {
        if let Err(err) = self.stop().await {
            tracing::warn!(error = %err, "stopping the private PostgreSQL failed");
        }
    }

    /// Whether the server was already running when [`start`](Self::start)
    /// returned this handle. A short-lived command (`readyd check`) must not
    /// stop a server it adopted: another readyd may be using it.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Options to connect to database `readyd` over the Unix socket.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.connect_options_for(DATABASE)
    }

    /// Options to connect to another database of the cluster (e.g. `postgres`, to
    /// create per-test databases).
    pub fn connect_options_for(&self, database: &str) -> PgConnectOptions {
        // Every field that PG* environment variables could have set is overridden,
        // except ones irrelevant over a trust-authenticated Unix socket.
        PgConnectOptions::new_without_pgpass()
            .socket(&self.socket_dir)
            .port(PORT)
            .username(SUPERUSER)
            .database(database)
            .ssl_mode(PgSslMode::Disable)
            .application_name("readyd")
    }

    /// A libpq-style URL for the `readyd` database, e.g.
    /// `postgres:///readyd?host=/abs/socket/dir&port=5432&user=readyd`, for tools and tests.
    ///
    /// The user goes in a parameter rather than before an empty host
    /// (`postgres://readyd@/readyd`): libpq accepts both, but sqlx's URL parser rejects
    /// user information without a host.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// Same as [`url`](Self::url), for another database of the cluster.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres:///{}?host={}&port={PORT}&user={}",
            pct_encode(database, false),
            pct_encode(&self.socket_dir.to_string_lossy(), true),
            pct_encode(SUPERUSER, false),
        )
    }

    /// The cluster directory, `<data_dir>/pg` (absolute).
    pub fn cluster_dir(&self) -> &Path {
        &self.cluster_dir
    }

    /// The directory holding the Unix socket, `<data_dir>/pg-socket` (absolute).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log file, `<data_dir>/pg.log` (absolute).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Stops the cluster (`pg_ctl stop -m fast`, waiting for it). Idempotent: stopping
    /// an already stopped cluster succeeds.
    pub async fn stop(&self) -> Result<(), EmbeddedPgError> {
        let mut stopped = self.stopped.lock().await;
        if !*stopped {
            self.pg_ctl_stop().await?;
            *stopped = true;
        }
        Ok(())
    }

    async fn pg_ctl_stop(&self) -> Result<(), EmbeddedPgError> {
        let log_from = file_len(&self.log_file);
        let args = args([
            &"stop",
            &"-w",
            &"-t",
            &PG_CTL_TIMEOUT_SECS,
            &"-m",
            &"fast",
            &"-D",
            &self.cluster_dir,
        ]);
        let out = self.runner.run(&self.runner.bins.pg_ctl, &args).await?;
        if out.status.success() || !self.is_running().await? {
            tracing::info!(cluster = %self.cluster_dir.display(), "embedded PostgreSQL stopped");
            return Ok(());
        }
        Err(command_error(
            &self.runner.bins.pg_ctl,
            &args,
            &out,
            Some((&self.log_file, log_from)),
        ))
    }

    /// Called when `pg_ctl status` reports a server whose postmaster.pid names our socket
    /// directory. Returns true once the socket exists (adoptable), false if the process
    /// goes away: `pg_ctl stop -w` returns as soon as postmaster.pid is removed, a moment
    /// before the process is gone, and a crashed server's PID can linger as a zombie.
    async fn wait_for_socket_or_exit(&self) -> Result<bool, EmbeddedPgError> {
        let socket = self.socket_dir.join(format!(".s.PGSQL.{PORT}"));
        let deadline = Instant::now() + SOCKET_WAIT;
        loop {
            if socket.exists() {
                return Ok(true);
            }
            if !self.is_running().await? {
                return Ok(false);
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedPgError::Unresponsive {
                    cluster: self.cluster_dir.clone(),
                    socket,
                    pid: fs::read_to_string(self.cluster_dir.join("postmaster.pid"))
                        .ok()
                        .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
                        .unwrap_or_default(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `pg_ctl status`: exit 0 = running, 3 = not running (a stale postmaster.pid whose
    /// process is gone counts as not running), 4 = no usable data directory.
    async fn is_running(&self) -> Result<bool, EmbeddedPgError> {
        let args = args([&"status", &"-D", &self.cluster_dir]);
        let out = self.runner.run(&self.runner.bins.pg_ctl, &args).await?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(command_error(&self.runner.bins.pg_ctl, &args, &out, None)),
        }
    }

    /// Runs initdb into `<data_dir>/pg.tmp` and renames it to `pg` only on success, so a
    /// readyd killed during initdb never leaves a half-made cluster behind.
    async fn init_cluster(&self, data_dir: &Path, durable: bool) -> Result<(), EmbeddedPgError> {
        let tmp = data_dir.join("pg.tmp");
        let (tmp2, cluster, user) = (
            tmp.clone(),
            self.cluster_dir.clone(),
            self.runner.user.clone(),
        );
        tokio::task::spawn_blocking(move || -> Result<(), EmbeddedPgError> {
            match fs::read_dir(&cluster) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(EmbeddedPgError::NotACluster { path: cluster });
                    }
                    fs::remove_dir(&cluster).map_err(io_err("remove empty directory", &cluster))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("read directory", &cluster)(e)),
            }
            if tmp2.exists() {
                fs::remove_dir_all(&tmp2).map_err(io_err("remove leftover", &tmp2))?;
            }
            // Created by us (the PostgreSQL user may not be allowed to write in data_dir).
            ensure_private_dir(&tmp2, &user)
        })
        .await??;

        tracing::info!(cluster = %self.cluster_dir.display(),
            "creating embedded PostgreSQL cluster (initdb)");
        let mut initdb_args = args([
            &"-D",
            &tmp,
            &"-U",
            &SUPERUSER,
            &"--auth=trust",
            &"--encoding=UTF8",
            &"--locale=C",
        ]);
        if !durable {
            initdb_args.push("--no-sync".into());
        }
        self.runner
            .run_checked(&self.runner.bins.initdb, &initdb_args, None)
            .await?;

        let cluster = self.cluster_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), EmbeddedPgError> {
            ensure_include(&tmp)?;
            fs::rename(&tmp, &cluster).map_err(io_err("rename into place", &cluster))
        })
        .await?
    }

    /// Creates database `readyd` unless it exists. Retries connecting for a while: an
    /// adopted server may still be starting up or recovering.
    async fn ensure_database(&self, log_from: u64) -> Result<(), EmbeddedPgError> {
        let db_err = |action| {
            let socket_dir = self.socket_dir.clone();
            let log = self.log_file.clone();
            move |source| EmbeddedPgError::Database {
                action,
                socket_dir,
                log_tail: log_excerpt(&log, log_from),
                source,
            }
        };
        let options = self.connect_options_for("postgres");
        let deadline = Instant::now() + CONNECT_RETRY;
        let mut conn = loop {
            match PgConnection::connect_with(&options).await {
                Ok(conn) => break conn,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "embedded PostgreSQL not accepting connections yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(db_err("connecting")(e)),
            }
        };
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await
                .map_err(db_err("looking up database readyd"))?;
        if !exists {
            // Simple-query protocol; the name is a constant, so no quoting concerns.
            match sqlx::raw_sql("CREATE DATABASE readyd")
                .execute(&mut conn)
                .await
            {
                Ok(_) => tracing::info!("created database readyd in embedded PostgreSQL"),
                // 42P04 duplicate_database: created concurrently, which is fine.
                Err(e)
                    if e.as_database_error()
                        .and_then(|d| d.code())
                        .is_some_and(|c| c == "42P04") => {}
                Err(e) => return Err(db_err("creating database readyd")(e)),
            }
        }
        let _ = conn.close().await;
        Ok(())
    }
}

/// Blocking part of `start`: directories, checks, binaries, user.
fn prepare(data_dir: &Path) -> Result<Prepared, EmbeddedPgError> {
    fs::create_dir_all(data_dir).map_err(io_err("create data directory", data_dir))?;
    let data_dir = fs::canonicalize(data_dir).map_err(io_err("resolve", data_dir))?;
    let Some(data_dir_str) = data_dir.to_str() else {
        return Err(EmbeddedPgError::UnusablePath {
            path: data_dir,
            reason: "the path is not valid UTF-8",
        });
    };
    // pg_ctl pastes the data directory and log path into a `sh -c "..."` command line
    // inside double quotes, so these characters would be interpreted by the shell.
    if data_dir_str.contains(['"', '$', '`', '\\', '\n', '\r']) {
        return Err(EmbeddedPgError::UnusablePath {
            path: data_dir,
            reason: "it contains one of the characters \" $ ` \\ or a line break, which \
                     pg_ctl cannot handle",
        });
    }
    let cluster_dir = data_dir.join("pg");
    let socket_dir = data_dir.join("pg-socket");
    let log_file = data_dir.join("pg.log");

    let socket_file = socket_dir.join(format!(".s.PGSQL.{PORT}"));
    let len = socket_file.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(EmbeddedPgError::SocketPathTooLong {
            path: socket_file,
            len,
            max: MAX_SOCKET_PATH,
        });
    }

    let bins = find_binaries()?;
    let (user, reown) = PgUser::choose(&cluster_dir)?;
    if user.switch {
        user.check_traversable(&data_dir)?;
        // A root-owned cluster (e.g. copied by root) would be refused by
        // PostgreSQL; one owned by `nobody` (made by an older readyd) must
        // not run as `nobody` again.
        if reown && let Ok(meta) = fs::metadata(&cluster_dir) {
            tracing::warn!(cluster = %cluster_dir.display(), owner_uid = meta.uid(), user = %user.name,
                "giving the embedded PostgreSQL cluster to its own user");
            if meta.uid() != 0 {
                stop_as_owner(&bins, &cluster_dir, meta.uid(), meta.gid());
            }
            chown_tree(&cluster_dir, &user)?;
        }
    }
    ensure_private_dir(&socket_dir, &user)?;

    Ok(Prepared {
        socket_dir_str: socket_dir.to_string_lossy().into_owned(),
        runner: Runner {
            bins,
            user,
            cwd: socket_dir.clone(),
        },
        data_dir,
        cluster_dir,
        socket_dir,
        log_file,
    })
}

/// Rotates an oversized server log and makes sure the log file exists and is writable
/// by the PostgreSQL user (pg_ctl opens it as that user, who may not be able to create
/// files in the data directory).
fn prepare_log(log: &Path, user: &PgUser) -> Result<(), EmbeddedPgError> {
    if fs::metadata(log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let old = log.with_extension("log.old");
        fs::rename(log, &old).map_err(io_err("rotate log file", log))?;
    }
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err("create log file", log))?;
    user.chown(log)?;
    fs::set_permissions(log, fs::Permissions::from_mode(0o600))
        .map_err(io_err("set permissions of", log))
}

/// Percent-encodes everything but unreserved characters (and `/` if `keep_slash`,
/// which is legal and more readable in a query value such as a socket directory).
fn pct_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_and_backslashes() {
        assert_eq!(conf_quote("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(conf_quote(""), "''");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("16") > parse_version("9"));
        assert!(parse_version("9.6") > parse_version("9.5"));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
    }

    fn facts(root: bool, owner: Option<(u32, Option<&str>)>, users: &[&str]) -> UserFacts {
        UserFacts {
            is_root: root,
            cluster_owner: owner.map(|(uid, name)| (uid, name.map(str::to_owned))),
            existing_users: users.iter().map(|user| (*user).to_owned()).collect(),
        }
    }

    fn existing(name: &str, reown: bool) -> UserPlan {
        UserPlan::Existing {
            name: name.to_owned(),
            reown,
        }
    }

    #[test]
    fn the_cluster_never_runs_as_nobody() {
        // Not root: readyd's own user, whatever else exists.
        assert_eq!(plan_user(&facts(false, None, &[])), UserPlan::Current);
        assert_eq!(
            plan_user(&facts(false, Some((65534, Some("nobody"))), &["postgres"])),
            UserPlan::Current
        );
        // Root, no cluster yet: the dedicated user, else postgres, else create
        // the dedicated user; never nobody.
        assert_eq!(
            plan_user(&facts(true, None, &[DEDICATED_USER, "postgres"])),
            existing(DEDICATED_USER, false)
        );
        assert_eq!(
            plan_user(&facts(true, None, &["postgres"])),
            existing("postgres", false)
        );
        assert_eq!(
            plan_user(&facts(true, None, &[])),
            UserPlan::CreateDedicated { reown: false }
        );
        // An existing cluster keeps its owner, unless that is root or a
        // shared user, whose cluster is given to a user of its own.
        assert_eq!(
            plan_user(&facts(true, Some((101, Some("postgres"))), &[])),
            existing("postgres", false)
        );
        assert_eq!(
            plan_user(&facts(true, Some((1000, Some("alice"))), &["postgres"])),
            existing("alice", false)
        );
        for owner in [
            (65534, Some("nobody")),
            (65534, None),
            (99, Some("nfsnobody")),
        ] {
            assert_eq!(
                plan_user(&facts(true, Some(owner), &["postgres"])),
                existing("postgres", true),
                "{owner:?}"
            );
            assert_eq!(
                plan_user(&facts(true, Some(owner), &[])),
                UserPlan::CreateDedicated { reown: true },
                "{owner:?}"
            );
        }
        assert_eq!(
            plan_user(&facts(true, Some((0, Some("root"))), &[DEDICATED_USER])),
            existing(DEDICATED_USER, true)
        );
        assert!(matches!(
            plan_user(&facts(true, Some((4242, None)), &["postgres"])),
            UserPlan::Refuse(detail) if detail.contains("4242")
        ));
    }

    #[test]
    fn url_encoding() {
        assert_eq!(pct_encode("/tmp/a b", true), "/tmp/a%20b");
        assert_eq!(pct_encode("a/b&c", false), "a%2Fb%26c");
    }
}
