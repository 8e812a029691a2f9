//! The readyd binary: parse the command line, run it.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    readyd::cli::run(readyd::cli::Cli::parse()).await
}
