//! The whole command line: `next` (offline), and the subcommands that talk to a monitor's HTTP
//! API (`--server`, `--token`, or `GOCRON_SERVER`, `GOCRON_TOKEN`). Tables for people,
//! `--json` for scripts. Exit 0 on success, 1 when the server says no or cannot be reached, 2 on
//! a usage or validation error (the server's 400 and 422 included).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

use gocron_shared::config::percent_encode;

use crate::next;

/// gocron from the command line.
#[derive(Parser, Debug)]
#[command(name = "gocronctl", version = gocron_shared::VERSION)]
struct Cli {
    /// The monitor's API, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, env = "GOCRON_SERVER")]
    server: Option<String>,
    /// A bearer token ([http] admin_token or viewer_token).
    #[arg(long, global = true, env = "GOCRON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant (a job's fields) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
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
    /// List jobs.
    Jobs {
        /// Only names containing this.
        #[arg(long)]
        q: Option<String>,
        /// Only this machine group.
        #[arg(long)]
        machine: Option<String>,
        /// Only enabled (true) or disabled (false) jobs.
        #[arg(long)]
        enabled: Option<bool>,
        /// The page (from 1).
        #[arg(long, default_value_t = 1)]
        page: u64,
        /// Jobs per page (at most 500).
        #[arg(long, default_value_t = 50)]
        per_page: u64,
    },
    /// One job: show, add, edit, enable, disable, rm.
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// A job's runs, newest first.
    Runs {
        /// The job.
        #[arg(long)]
        job: i64,
        /// Only runs in this status.
        #[arg(long)]
        status: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// A run's output (the recorded tail); with --follow, as it is produced while the run is
    /// running, until it ends.
    Logs {
        /// The run.
        run: i64,
        /// Print the output as it comes until the run ends (exit 0), relayed by the monitor
        /// from the run's executor.
        #[arg(long, short)]
        follow: bool,
    },
    /// Run a job now.
    Run {
        /// The job.
        job: i64,
        /// A variable for this run only, on top of the job's `env` (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// Report an event: every enabled job with rule `@event NAME` runs once for it.
    Event {
        /// The event's name, e.g. order.paid.
        name: String,
        /// Handed to each run as GOCRON_EVENT_PAYLOAD and on stdin.
        #[arg(long)]
        payload: Option<String>,
        /// Reporting the same name and key again fires nothing more.
        #[arg(long)]
        dedup_key: Option<String>,
    },
    /// Kill a run in flight.
    Kill {
        /// The run.
        run: i64,
    },
    /// The live executors: groups, runs in flight, since when.
    Executors,
    /// The cluster in a few lines: the monitor's database, jobs, executors, dispatchers.
    Status,
}

#[derive(Subcommand, Debug)]
enum JobAction {
    /// Every column of a job, and its next fire.
    Show {
        /// The job.
        id: i64,
    },
    /// Create a job (validated as the monitor validates rows).
    Add(JobFields),
    /// Change some columns of a job.
    Edit {
        /// The job.
        id: i64,
        #[command(flatten)]
        fields: JobFields,
    },
    /// Enable a job.
    Enable {
        /// The job.
        id: i64,
    },
    /// Disable a job.
    Disable {
        /// The job.
        id: i64,
    },
    /// Delete a job.
    Rm {
        /// The job.
        id: i64,
    },
}

/// The columns `job add` and `job edit` may set.
#[derive(Args, Debug)]
struct JobFields {
    /// `name`.
    #[arg(long)]
    name: Option<String>,
    /// `rule` (quote it).
    #[arg(long)]
    rule: Option<String>,
    /// `command`.
    #[arg(long)]
    command: Option<String>,
    /// `machine` (a `[machine]` group; empty: any executor).
    #[arg(long)]
    machine: Option<String>,
    /// `timeout_secs`.
    #[arg(long)]
    timeout_secs: Option<i64>,
    /// `timeout_policy` (`abandon`, `sync`, `kill`).
    #[arg(long)]
    timeout_policy: Option<String>,
    /// `time_zone`.
    #[arg(long)]
    time_zone: Option<String>,
    /// `misfire` (`skip`, `once`, `all`).
    #[arg(long)]
    misfire: Option<String>,
    /// `env`: `KEY=VALUE` lines (a shell job's own variables).
    #[arg(long)]
    env: Option<String>,
    /// `workdir`: where a shell job starts (an absolute path).
    #[arg(long)]
    workdir: Option<String>,
    /// `retries`: how many times a failed run is run again.
    #[arg(long)]
    retries: Option<i64>,
    /// `retry_delay_secs`: seconds before the first retry (doubling for each next one).
    #[arg(long)]
    retry_delay_secs: Option<i64>,
    /// `delay_secs`: for an `@event` job, seconds between the event and its run.
    #[arg(long)]
    delay_secs: Option<i64>,
    /// `on_success`: jobs (ids or names, comma-separated) started when a run succeeds.
    #[arg(long)]
    on_success: Option<String>,
    /// `on_failure`: jobs started when a run fails for good.
    #[arg(long)]
    on_failure: Option<String>,
    /// `route`: round_robin, random, least_busy, hash, broadcast or shard.
    #[arg(long)]
    route: Option<String>,
}

impl JobFields {
    fn body(&self) -> Value {
        let mut body = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                body.insert(key.to_owned(), v);
            }
        };
        put("name", self.name.clone().map(Value::from));
        put("rule", self.rule.clone().map(Value::from));
        put("command", self.command.clone().map(Value::from));
        put("machine", self.machine.clone().map(Value::from));
        put("timeout_secs", self.timeout_secs.map(Value::from));
        put(
            "timeout_policy",
            self.timeout_policy.clone().map(Value::from),
        );
        put("time_zone", self.time_zone.clone().map(Value::from));
        put("misfire", self.misfire.clone().map(Value::from));
        put("env", self.env.clone().map(Value::from));
        put("workdir", self.workdir.clone().map(Value::from));
        put("retries", self.retries.map(Value::from));
        put("retry_delay_secs", self.retry_delay_secs.map(Value::from));
        put("delay_secs", self.delay_secs.map(Value::from));
        put("on_success", self.on_success.clone().map(Value::from));
        put("on_failure", self.on_failure.clone().map(Value::from));
        put("route", self.route.clone().map(Value::from));
        Value::Object(body)
    }
}

/// What a command line did: its exit code and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// 0 success, 1 refused or unreachable, 2 usage or validation.
    pub code: u8,
    /// Standard output.
    pub out: String,
    /// Standard error.
    pub err: String,
}

impl Outcome {
    fn ok(out: String) -> Outcome {
        Outcome {
            code: 0,
            out,
            err: String::new(),
        }
    }

    fn fail(code: u8, err: impl Into<String>) -> Outcome {
        Outcome {
            code,
            out: String::new(),
            err: format!("gocronctl: {}\n", err.into()),
        }
    }
}

/// Runs the command line `args` (the program's name first); what `logs --follow` streams is
/// at the start of the outcome's `out`.
pub async fn run(args: impl IntoIterator<Item = String>) -> Outcome {
    let mut streamed = Vec::new();
    let mut outcome = run_with(args, |chunk| {
        streamed.extend_from_slice(chunk);
        Ok(())
    })
    .await;
    if !streamed.is_empty() {
        outcome.out = String::from_utf8_lossy(&streamed).into_owned() + &outcome.out;
    }
    outcome
}

/// Runs the command line `args` (the program's name first), giving `live` what `logs --follow`
/// streams as it arrives (an error from `live`, such as a closed pipe, ends the command).
pub async fn run_with(
    args: impl IntoIterator<Item = String>,
    mut live: impl FnMut(&[u8]) -> std::io::Result<()> + Send,
) -> Outcome {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let text = e.render().to_string();
            return if code == 0 {
                Outcome::ok(text)
            } else {
                Outcome {
                    code,
                    out: String::new(),
                    err: text,
                }
            };
        }
    };
    if let Command::Next {
        rule,
        tz,
        from,
        count,
    } = &cli.command
    {
        return match next::next_fires(rule, *tz, from.unwrap_or_else(Utc::now), *count) {
            Ok(fires) => Outcome::ok(fires.iter().map(|t| next::format(t) + "\n").collect()),
            Err(e) => Outcome::fail(2, e.to_string()),
        };
    }
    let Some(server) = cli.server.clone() else {
        return Outcome::fail(
            2,
            "--server (or GOCRON_SERVER) is needed to talk to the API",
        );
    };
    let api = Api {
        base: server.trim_end_matches('/').to_owned(),
        token: cli.token.clone(),
        http: reqwest::Client::new(),
    };
    if let Command::Logs { run, follow: true } = cli.command {
        return follow(&api, run, &mut live).await;
    }
    match api_command(&api, &cli.command).await {
        Ok(value) => Outcome::ok(if cli.json {
            format!("{value:#}\n")
        } else {
            render(&cli.command, &value)
        }),
        Err((code, why)) => Outcome::fail(code, why),
    }
}

struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// `method path` with a JSON `body`: the answer, or (exit code, why).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, (u8, String)> {
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .timeout(std::time::Duration::from_secs(30));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| (1, format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| (1, format!("reading the answer: {e}")))?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        Err(refusal(status, &value))
    }
}

/// The exit code and words of an error answer.
fn refusal(status: reqwest::StatusCode, answer: &Value) -> (u8, String) {
    let why = answer
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| answer.to_string(), str::to_owned);
    let code = if matches!(status.as_u16(), 400 | 422) {
        2
    } else {
        1
    };
    (code, format!("{}: {why}", status.as_u16()))
}

/// `logs RUN --follow`: the output stream, given to `live` as it arrives, until the run ends
/// (exit 0); exit 1 when the stream breaks, or ends while the run is still going (the monitor
/// then said why in the stream's last line).
async fn follow(
    api: &Api,
    run: i64,
    live: &mut (impl FnMut(&[u8]) -> std::io::Result<()> + Send),
) -> Outcome {
    // No overall timeout: the stream lasts as long as the run.
    let mut request = api
        .http
        .get(format!("{}/api/v1/runs/{run}/output?follow=true", api.base));
    if let Some(token) = &api.token {
        request = request.bearer_auth(token);
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Outcome::fail(1, format!("cannot reach {}: {e}", api.base)),
    };
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let answer = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let (code, why) = refusal(status, &answer);
        return Outcome::fail(code, why);
    }
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => {
                if let Err(e) = live(&bytes) {
                    return Outcome::fail(1, format!("cannot write the output: {e}"));
                }
            }
            Ok(None) => break,
            Err(e) => return Outcome::fail(1, format!("the output stream broke: {e}")),
        }
    }
    match api
        .call(reqwest::Method::GET, &format!("/runs/{run}"), None)
        .await
    {
        Ok(row) => match row.get("status").and_then(Value::as_str) {
            Some(status @ ("dispatched" | "running")) => Outcome::fail(
                1,
                format!("the output stream ended, but run {run} is still {status}"),
            ),
            _ => Outcome::ok(String::new()),
        },
        Err((code, why)) => Outcome::fail(code, why),
    }
}

async fn api_command(api: &Api, command: &Command) -> Result<Value, (u8, String)> {
    use reqwest::Method;
    match command {
        Command::Next { .. } => unreachable!("answered offline"),
        Command::Jobs {
            q,
            machine,
            enabled,
            page,
            per_page,
        } => {
            let mut query = vec![format!("page={page}"), format!("per_page={per_page}")];
            if let Some(q) = q {
                query.push(format!("q={}", percent_encode(q)));
            }
            if let Some(m) = machine {
                query.push(format!("machine={}", percent_encode(m)));
            }
            if let Some(e) = enabled {
                query.push(format!("enabled={e}"));
            }
            api.call(Method::GET, &format!("/jobs?{}", query.join("&")), None)
                .await
        }
        Command::Job { action } => match action {
            JobAction::Show { id } => api.call(Method::GET, &format!("/jobs/{id}"), None).await,
            JobAction::Add(fields) => api.call(Method::POST, "/jobs", Some(fields.body())).await,
            JobAction::Edit { id, fields } => {
                api.call(Method::PATCH, &format!("/jobs/{id}"), Some(fields.body()))
                    .await
            }
            JobAction::Enable { id } | JobAction::Disable { id } => {
                let on = matches!(action, JobAction::Enable { .. });
                api.call(
                    Method::PATCH,
                    &format!("/jobs/{id}"),
                    Some(json!({ "enabled": on })),
                )
                .await
            }
            JobAction::Rm { id } => {
                api.call(Method::DELETE, &format!("/jobs/{id}"), None)
                    .await?;
                Ok(json!({ "deleted": id }))
            }
        },
        Command::Runs { job, status, limit } => {
            let mut path = format!("/jobs/{job}/runs?per_page={}", (*limit).clamp(1, 500));
            if let Some(s) = status {
                path.push_str(&format!("&status={}", percent_encode(s)));
            }
            api.call(Method::GET, &path, None).await
        }
        Command::Logs { run, .. } => api.call(Method::GET, &format!("/runs/{run}"), None).await,
        Command::Run { job, env } => {
            let body = (!env.is_empty()).then(|| serde_json::json!({"env": env.join("\n")}));
            api.call(Method::POST, &format!("/jobs/{job}/run"), body)
                .await
        }
        Command::Event {
            name,
            payload,
            dedup_key,
        } => {
            let mut body = serde_json::json!({"name": name});
            if let Some(payload) = payload {
                body["payload"] = payload.as_str().into();
            }
            if let Some(key) = dedup_key {
                body["dedup_key"] = key.as_str().into();
            }
            api.call(Method::POST, "/events", Some(body)).await
        }
        Command::Kill { run } => {
            api.call(Method::POST, &format!("/runs/{run}/kill"), None)
                .await
        }
        Command::Executors => api.call(Method::GET, "/executors", None).await,
        Command::Status => {
            let total = |v: Value| v.get("total").cloned().unwrap_or(Value::Null);
            let jobs = api.call(Method::GET, "/jobs?per_page=1", None).await?;
            let invalid = api
                .call(Method::GET, "/jobs?per_page=1&has_error=true", None)
                .await?;
            let disabled = api
                .call(Method::GET, "/jobs?per_page=1&enabled=false", None)
                .await?;
            let executors = api.call(Method::GET, "/executors", None).await?;
            let dispatchers = api.call(Method::GET, "/dispatchers", None).await?;
            let count =
                |v: &Value, key: &str| v.get(key).and_then(Value::as_array).map_or(0, Vec::len);
            Ok(json!({
                "jobs": total(jobs),
                "jobs_invalid": total(invalid),
                "jobs_disabled": total(disabled),
                "executors": count(&executors, "executors"),
                "dispatchers": count(&dispatchers, "dispatchers"),
            }))
        }
    }
}

/// A field of a JSON object as table text.
fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.replace(['\n', '\t'], " "),
        Some(other) => other.to_string(),
    }
}

/// Rows as aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count().min(60));
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let c: String = c.chars().take(60).collect();
            if i + 1 == cells.len() {
                text.push_str(&c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The answer as people read it.
fn render(command: &Command, value: &Value) -> String {
    let empty = Vec::new();
    match command {
        Command::Jobs { .. } => {
            let jobs = value
                .get("jobs")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    [
                        "id",
                        "name",
                        "rule",
                        "machine",
                        "enabled",
                        "next_fire_at",
                        "last_error",
                    ]
                    .iter()
                    .map(|k| cell(j, k))
                    .collect()
                })
                .collect();
            let mut out = table(
                &[
                    "ID",
                    "NAME",
                    "RULE",
                    "MACHINE",
                    "ENABLED",
                    "NEXT FIRE",
                    "ERROR",
                ],
                &rows,
            );
            out.push_str(&format!("({} of {})\n", jobs.len(), cell(value, "total")));
            out
        }
        Command::Runs { .. } => {
            let runs = value
                .get("runs")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            let rows: Vec<Vec<String>> = runs
                .iter()
                .map(|r| {
                    let mut row: Vec<String> = [
                        "id",
                        "scheduled_at",
                        "status",
                        "trigger",
                        "executor",
                        "exit_code",
                        "error",
                    ]
                    .iter()
                    .map(|k| cell(r, k))
                    .collect();
                    // A run of a fanned-out tick (broadcast, shard): its place, `index/total`.
                    let shard = match r.get("shard_total").and_then(Value::as_i64) {
                        Some(total) if total > 0 => format!("{}/{total}", cell(r, "shard_index")),
                        _ => "-".to_owned(),
                    };
                    row.insert(4, shard);
                    row
                })
                .collect();
            table(
                &[
                    "ID",
                    "SCHEDULED",
                    "STATUS",
                    "TRIGGER",
                    "SHARD",
                    "EXECUTOR",
                    "EXIT",
                    "ERROR",
                ],
                &rows,
            )
        }
        Command::Executors => {
            let executors = value
                .get("executors")
                .and_then(Value::as_array)
                .unwrap_or(&empty);
            let rows: Vec<Vec<String>> = executors
                .iter()
                .map(|e| {
                    let groups = e
                        .get("groups")
                        .and_then(Value::as_array)
                        .map(|g| {
                            g.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        cell(e, "name"),
                        cell(e, "address"),
                        if groups.is_empty() {
                            "-".to_owned()
                        } else {
                            groups
                        },
                        cell(e, "runs_in_flight"),
                        cell(e, "since"),
                    ]
                })
                .collect();
            table(&["NAME", "ADDRESS", "GROUPS", "IN FLIGHT", "SINCE"], &rows)
        }
        Command::Logs { .. } => value
            .get("output")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        Command::Job {
            action: JobAction::Rm { id },
        } => format!("job {id} deleted\n"),
        _ => match value {
            Value::Object(map) => map
                .keys()
                .map(|k| format!("{k}: {}\n", cell(value, k)))
                .collect(),
            other => format!("{other}\n"),
        },
    }
}
