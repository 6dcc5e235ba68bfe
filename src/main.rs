//! The `quorumd` binary: parses the command line, runs it, and maps an error
//! to its exit code with one sentence on stderr.

use std::time::Instant;

use clap::Parser;

fn main() {
    let started = Instant::now();
    quorumd::logging::init();
    // One log line per panic, with its place, instead of the default
    // multi-line report. A panic in a task the node cannot run without also
    // ends the process with exit 1 (see `runtime::supervise`).
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!(
            "panic{place}: {}",
            quorumd::runtime::panic_message(info.payload())
        );
    }));
    let cli = quorumd::cli::Cli::parse();
    let outcome = std::panic::catch_unwind(|| quorumd::cli::run(cli, started));
    let prefix = quorumd::logging::error_prefix();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("{prefix}quorumd: error: {e}");
            std::process::exit(e.exit_code());
        }
        Err(panic) => {
            eprintln!(
                "{prefix}quorumd: error: internal: panicked: {}",
                quorumd::runtime::panic_message(&*panic)
            );
            std::process::exit(1);
        }
    }
}
