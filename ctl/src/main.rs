//! `gocronctl`: see the library for what each subcommand does.

use std::io::Write as _;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clap::{Parser, Subcommand};
use gocron_ctl::next;

/// gocron from the command line.
#[derive(Parser)]
#[command(name = "gocronctl", version = gocron_shared::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the next fire instants of a rule, one per line, in RFC 3339 with the zone's offset.
    Next {
        /// The rule, as in `cron_job.rule` (quote it): `'30 2 * * *'`, `@every 90s`, ...
        rule: String,
        /// The IANA time zone to evaluate it in (a job's `time_zone`).
        #[arg(long, default_value = "UTC", value_parser = next::parse_tz)]
        tz: Tz,
        /// Start after this RFC 3339 instant instead of now.
        #[arg(long, value_parser = next::parse_from)]
        from: Option<DateTime<Utc>>,
        /// How many instants to print.
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Next {
            rule,
            tz,
            from,
            count,
        } => match next::next_fires(&rule, tz, from.unwrap_or_else(Utc::now), count) {
            Ok(fires) => {
                let mut out = std::io::stdout().lock();
                // A closed pipe (`| head -1`) is not an error worth a panic.
                let _ = fires
                    .iter()
                    .try_for_each(|t| writeln!(out, "{}", next::format(t)));
                ExitCode::SUCCESS
            }
            // Exit 2 like clap's own usage errors: the input is wrong, not the machine.
            Err(e) => {
                eprintln!("gocronctl: {e}");
                ExitCode::from(2)
            }
        },
    }
}
