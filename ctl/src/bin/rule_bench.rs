//! `gocron-rule-bench [N]`: see [`gocron_ctl::bench`]. Run it in release mode:
//! `cargo run --release -p gocron-ctl --bin gocron-rule-bench`.

use std::io::Write as _;

use clap::Parser;

/// How fast gocron computes next fire instants, and what its schedules weigh.
#[derive(Parser)]
#[command(name = "gocron-rule-bench", version = gocron_shared::VERSION)]
struct Args {
    /// How many schedules to build.
    #[arg(default_value_t = 1_000_000)]
    schedules: usize,
}

fn main() {
    let args = Args::parse();
    let report = gocron_ctl::bench::run(args.schedules);
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = write!(std::io::stdout(), "{report}");
}
