//! `gocronctl`: see [`gocron_ctl::cli`] for what each subcommand does.

use std::io::Write as _;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // What `logs --follow` streams is written as it comes.
    let outcome = gocron_ctl::cli::run_with(std::env::args(), |chunk| {
        let mut out = std::io::stdout().lock();
        out.write_all(chunk)?;
        out.flush()
    })
    .await;
    // A closed pipe (`| head -1`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(outcome.out.as_bytes());
    let _ = std::io::stderr().lock().write_all(outcome.err.as_bytes());
    ExitCode::from(outcome.code)
}
