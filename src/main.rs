//! The `quorumd` binary: parses the command line, runs it, and maps an error
//! to its exit code with one sentence on stderr.

use std::time::Instant;

use clap::Parser;

fn main() {
    let started = Instant::now();
    quorumd::logging::init();
    // A panic anywhere ends the process at once with one sentence and the
    // exit code of what it stands for (exit 1; a damaged data dir if redb
    // panicked on it): a node with a dead task must not go on answering
    // handshakes and `/health`. Release builds do not unwind (Cargo.toml).
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = quorumd::runtime::panic_message(info.payload());
        let error = quorumd::runtime::panic_error(message, &place);
        eprintln!(
            "{}quorumd: error: {error}",
            quorumd::logging::error_prefix()
        );
        std::process::exit(error.exit_code());
    }));
    let cli = quorumd::cli::Cli::parse();
    if let Err(e) = quorumd::cli::run(cli, started) {
        eprintln!("{}quorumd: error: {e}", quorumd::logging::error_prefix());
        std::process::exit(e.exit_code());
    }
}
