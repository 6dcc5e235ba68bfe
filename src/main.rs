//! The `quorumd` binary: parses the command line, runs it, and maps an error
//! to its exit code with one sentence on stderr.

use std::time::Instant;

use clap::Parser;

fn main() {
    let started = Instant::now();
    quorumd::logging::init();
    let cli = quorumd::cli::Cli::parse();
    if let Err(e) = quorumd::cli::run(cli, started) {
        eprintln!("{}quorumd: error: {e}", quorumd::logging::error_prefix());
        std::process::exit(e.exit_code());
    }
}
