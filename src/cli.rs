//! The command line: `serve`, `migrate`, `check`, and the client commands
//! (`health`, `flags`, `config`, `maintenance`, `deploy`, in `client/`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::settings::{
    DatabaseArgs, DatabaseSettings, DatabaseSource, LogArgs, LogFormat, ServeArgs,
};
use crate::store::Store;

/// readyd: health, configuration, feature flags and deployment history for
/// your app, over gRPC on localhost, backed by PostgreSQL.
#[derive(Parser, Debug)]
#[command(name = "readyd", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    ///
    /// Example: DATABASE_URL=postgres://readyd@db/readyd readyd serve --environment production
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    ///
    /// Example: DATABASE_URL=postgres://readyd@db/readyd readyd migrate
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Run the start-up checks and exit: 0 when all pass, else 1 with one
    /// line per problem. Changes nothing.
    ///
    /// Example: readyd check --environment staging
    Check(ServeArgs),
    /// Ask a running readyd for a grpc.health.v1 status; exit 0 iff SERVING.
    Health(crate::client::health::HealthArgs),
    /// Read, change and evaluate feature flags of a running readyd.
    Flags(crate::client::flags::FlagsArgs),
    /// Read and change segments: named constraint sets flag rules share.
    Segments(crate::client::segments::SegmentsArgs),
    /// Read and change configuration of a running readyd.
    Config(crate::client::config::ConfigArgs),
    /// Turn maintenance mode on or off, or show it.
    Maintenance(crate::client::config::MaintenanceArgs),
    /// Record deployments and rollbacks, list them, show the current one.
    Deploy(crate::client::deploy::DeployArgs),
}

/// Drivers that log every connection of every check run at INFO (or a
/// dropped one at ERROR); readyd reports the check's outcome itself.
const QUIET_DRIVERS: &[&str] = &["async_nats", "lapin", "amq_protocol"];

/// `filter` with the check drivers turned down to `warn`, unless the filter
/// names them itself.
fn with_quiet_drivers(filter: &str) -> String {
    let mut full = filter.to_owned();
    for driver in QUIET_DRIVERS {
        if !filter.contains(driver) {
            if !full.trim().is_empty() {
                full.push(',');
            }
            full.push_str(driver);
            full.push_str("=warn");
        }
    }
    full
}

/// Sets up logging to stderr. A bad filter falls back to `info` with a
/// warning rather than refusing to start.
pub fn init_logging(log: &LogArgs) {
    let (filter, bad_filter) = match EnvFilter::try_new(with_quiet_drivers(&log.filter)) {
        Ok(filter) => (filter, None),
        Err(err) => (EnvFilter::new("info"), Some(err)),
    };
    // Colours only for a terminal: log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    if let Some(err) = bad_filter {
        tracing::warn!(filter = %log.filter, error = %err, "invalid log filter (READYD_LOG); using info");
    }
}

/// Runs a parsed command line to completion.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            init_logging(&args.log);
            serve(args).await
        }
        Command::Check(args) => {
            init_logging(&args.log);
            let report = crate::startup::check(&args).await;
            if report.problems.is_empty() {
                println!("ok: every start-up check passed");
                ExitCode::SUCCESS
            } else {
                eprint!("{report}");
                ExitCode::FAILURE
            }
        }
        Command::Migrate { database, log } => {
            init_logging(&log);
            migrate(&database).await
        }
        Command::Health(args) => crate::client::health::run(args).await,
        Command::Flags(args) => crate::client::finish(crate::client::flags::run(args).await),
        Command::Segments(args) => crate::client::finish(crate::client::segments::run(args).await),
        Command::Config(args) => crate::client::finish(crate::client::config::run(args).await),
        Command::Maintenance(args) => {
            crate::client::finish(crate::client::config::run_maintenance(args).await)
        }
        Command::Deploy(args) => crate::client::finish(crate::client::deploy::run(args).await),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let mut signals = crate::signals::Signals::listen();
    // A signal during start-up (e.g. while waiting for the database) ends
    // the process at once: there is nothing to drain yet.
    let started = tokio::select! {
        started = crate::startup::prepare(&args) => started,
        () = signals.next() => return ExitCode::SUCCESS,
    };
    let started = match started {
        Ok(started) => started,
        Err(report) => {
            eprint!("{report}");
            eprintln!("readyd did not start: {} problem(s)", report.problems.len());
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async move {
        signals.next().await;
        // A second signal means "now": exit without waiting for the drain.
        tokio::spawn(async move {
            signals.next().await;
            tracing::warn!("second signal: exiting at once");
            std::process::exit(130);
        });
    };
    match crate::serve(started, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "readyd failed");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(args: &DatabaseArgs) -> ExitCode {
    let settings = match DatabaseSettings::from_args(args) {
        Ok(settings) => settings,
        Err(errors) => {
            for error in errors {
                eprintln!("error: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    let (options, private_pg) = match &settings.source {
        DatabaseSource::External(options) => ((**options).clone(), None),
        DatabaseSource::Private => {
            match crate::embedded_pg::EmbeddedPostgres::start(&settings.data_dir, true).await {
                Ok(pg) => (pg.connect_options(), Some(pg)),
                Err(err) => {
                    eprintln!("error: private PostgreSQL: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let outcome = match Store::connect(options, 1, settings.wait, settings.timeouts).await {
        Ok(store) => {
            let result = store.migrate().await;
            store.close().await;
            result.map_err(|err| err.to_string())
        }
        Err(err) => Err(format!("cannot connect to the database: {err}")),
    };
    // Leave a private PostgreSQL that a running readyd uses.
    if let Some(pg) = private_pg.filter(|pg| !pg.adopted()) {
        pg.stop_or_warn().await;
    }
    match outcome {
        Ok(()) => {
            println!("ok: migrations applied");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every command (unique names,
    /// valid defaults), which otherwise only fire when a command is used.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
