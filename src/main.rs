//! The `quorumd` binary: parses the command line, runs it, and maps an error
//! to its exit code with one sentence on stderr.

use std::time::Instant;

use clap::Parser;

fn main() {
    let started = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,raft=warn"))
        .format_target(false)
        .init();
    let cli = quorumd::cli::Cli::parse();
    if let Err(e) = quorumd::cli::run(cli, started) {
        eprintln!("quorumd: error: {e}");
        std::process::exit(e.exit_code());
    }
}
