//! The `flink-ticketd` binary: parse arguments, turn SIGTERM/SIGINT into a cancellation, run the
//! command, and map failures to one line on stderr and an exit code (0, 1, or 2 for bad usage).

use std::process::ExitCode;

use clap::Parser as _;
use flink_ticketd::cli::{Cli, execute};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("flink-ticketd: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match execute(cli, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("flink-ticketd: {}", format!("{error:#}").trim_end());
                ExitCode::from(error.exit_code())
            }
        }
    })
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        eprintln!("flink-ticketd: cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    shutdown.cancel();
}

/// `flink-ticketd list | head` closes stdout early; Rust's `println!` then panics with "Broken
/// pipe". Like other command-line tools, stop quietly instead of printing a panic.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
}
