//! Prometheus metrics: the monitor's `/metrics` on its API address (no token), and an
//! executor's own on `[metrics] listen`, each counting what happened.

use std::path::Path;
use std::time::Duration;

use gocron_tests::{Backend, Cluster, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// The value of the sample `name{labels}` (labels as printed: sorted, quoted), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn scrape(url: &str) -> String {
    let response = reqwest::get(url).await.expect("scrape");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.expect("body")
}

/// A free loopback port.
fn free_port() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    format!("127.0.0.1:{}", probe.local_addr().expect("address").port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_daemon_serves_what_it_counted() {
    let mut c = Cluster::new(Backend::Sqlite, &[("php", "127.0.0.1")]).await;
    c.set("ALARM", "CHECK_MS", "250");
    c.set("ALARM", "GRACE_SECS", "1");
    // Each daemon a process of its own, so each registry is its own (tests share this one).
    let (exec, disp, mon) = (free_port(), free_port(), free_port());
    c.set("METRICS", "LISTEN", &exec);
    let _executor = c.start_process("EXECUTOR", "exec-m", Path::new(crate::EXECUTOR_PROCESS));
    c.set("METRICS", "LISTEN", &disp);
    let _dispatcher = c.start_process("DISPATCHER", "disp-m", Path::new(crate::DISPATCHER_PROCESS));
    c.set("HTTP", "LISTEN", &mon);
    let _monitor = c.start_process("MONITOR", "monitor", Path::new(crate::MONITOR_PROCESS));
    let ok = c.insert_job("ok", "* * * * * *", "true").await;
    let fails = c.insert_job("fails", "* * * * * *", "exit 3").await;
    let off = c.insert_job("off", "@daily", "true").await;
    c.sql(
        "UPDATE cron_job SET enabled = 0 WHERE id = ?",
        vec![off.into()],
    )
    .await;
    c.insert_job("bad", "not a rule", "true").await;
    c.wait_for_finished(ok, 2, WAIT).await;
    c.wait_for_finished(fails, 2, WAIT).await;

    // The executor's: its runs by status, and the fire lag of each; nothing of the others.
    let text = wait_until("the executor's counts", WAIT, || async {
        let text = scrape(&format!("http://{exec}/metrics")).await;
        let ok = sample(&text, "gocron_runs_total{status=\"succeeded\"}")?;
        let failed = sample(&text, "gocron_runs_total{status=\"failed\"}")?;
        (ok >= 2.0 && failed >= 2.0).then_some(text)
    })
    .await;
    let lags = sample(&text, "gocron_fire_lag_seconds_count").expect("fire lag");
    assert!(lags >= 4.0, "{text}");
    // The four outcomes were in the database before the scrape: each counted once committed.
    let recorded = sample(&text, "gocron_outcome_delay_seconds_count").expect("outcome delay");
    assert!(recorded >= 4.0, "{text}");
    assert!(sample(&text, "gocron_runs_running").is_some(), "{text}");
    assert!(!text.contains("gocron_ticks_total{"), "{text}");

    // The dispatcher's: ticks fired.
    let text = scrape(&format!("http://{disp}/metrics")).await;
    let fired = sample(&text, "gocron_ticks_total{outcome=\"fired\"}").expect("ticks");
    assert!(fired >= 4.0, "{text}");

    // The monitor's, on its API address and without a token: jobs by state, live executors by
    // group, alarms recorded.
    let text = wait_until("the monitor's gauges and counts", WAIT, || async {
        let text = scrape(&format!("http://{mon}/metrics")).await;
        let valid = sample(&text, "gocron_jobs{state=\"valid\"}")?;
        let alarms = sample(
            &text,
            "gocron_alarms_total{channel=\"none\",kind=\"run_failed\"}",
        )?;
        (valid == 2.0 && alarms >= 1.0).then_some(text)
    })
    .await;
    assert_eq!(
        sample(&text, "gocron_jobs{state=\"invalid\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gocron_jobs{state=\"disabled\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gocron_executors_live{group=\"php\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gocron_executors_live{group=\"*\"}"),
        Some(1.0),
        "{text}"
    );
    c.shutdown().await;
}
