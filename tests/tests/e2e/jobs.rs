//! Job rows written with plain SQL: hot add, change, disable, bad rows; what a run records.

use std::time::Duration;

use chrono::Utc;
use gocron_tests::{Backend, Cluster, wait_until};

/// Lets the `clock` job tick four more times, then asserts that `job` has no run scheduled later
/// than a second after `since` (when it was `what`).
async fn assert_no_run_after(
    c: &Cluster,
    job: i64,
    clock: i64,
    since: chrono::DateTime<Utc>,
    what: &str,
) {
    let seen = c.runs(clock).await.len();
    c.wait_for_finished(clock, seen + 4, Duration::from_secs(30))
        .await;
    let late: Vec<_> = c
        .runs(job)
        .await
        .into_iter()
        .filter(|r| r.scheduled_at > since + chrono::Duration::milliseconds(1000))
        .collect();
    assert!(late.is_empty(), "runs after the job was {what}: {late:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_added_changed_and_disabled_take_effect_within_a_second() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    // A job that keeps ticking throughout, to show time passing without sleeping.
    let clock = c.insert_job("clock", "* * * * * *", "true").await;
    c.wait_for_finished(clock, 1, Duration::from_secs(20)).await;

    // Added: the first tick more than a second after the INSERT runs.
    let added_at = Utc::now();
    let job = c.insert_job("hot", "* * * * * *", "echo first").await;
    let runs = c.wait_for_finished(job, 1, Duration::from_secs(20)).await;
    let first = &runs[0];
    assert!(
        first.scheduled_at <= added_at + chrono::Duration::milliseconds(2000),
        "first tick {} is not within a second of the insert at {added_at}",
        first.scheduled_at
    );
    assert_eq!(first.output.as_deref(), Some("first\n"));

    // Changed: ticks from a second after the UPDATE run the new command.
    let changed_at = Utc::now();
    c.sql(
        "UPDATE cron_job SET command = 'echo second' WHERE id = ?",
        vec![job.into()],
    )
    .await;
    let effective = changed_at + chrono::Duration::milliseconds(1000);
    let runs = wait_until(
        "two finished runs a second after the change",
        Duration::from_secs(20),
        || async {
            let runs = c.runs(job).await;
            let after = runs
                .iter()
                .filter(|r| r.scheduled_at > effective && r.finished_at.is_some())
                .count();
            (after >= 2).then_some(runs)
        },
    )
    .await;
    for r in runs.iter().filter(|r| r.finished_at.is_some()) {
        if r.scheduled_at > effective {
            assert_eq!(r.output.as_deref(), Some("second\n"), "{r:#?}");
        }
    }

    // Disabled: no tick later than a second after the UPDATE runs.
    let disabled_at = Utc::now();
    c.sql(
        "UPDATE cron_job SET enabled = 0 WHERE id = ?",
        vec![job.into()],
    )
    .await;
    assert_no_run_after(&c, job, clock, disabled_at, "disabled").await;

    // Deleted rows stop too, and re-enabling brings a job back.
    c.sql(
        "UPDATE cron_job SET enabled = 1 WHERE id = ?",
        vec![job.into()],
    )
    .await;
    let n = c.runs(job).await.len();
    c.wait_for_finished(job, n + 1, Duration::from_secs(20))
        .await;
    let deleted_at = Utc::now();
    c.sql("DELETE FROM cron_job WHERE id = ?", vec![job.into()])
        .await;
    assert_no_run_after(&c, job, clock, deleted_at, "deleted").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_reported_and_never_stop_the_others() {
    let mut c = Cluster::new(Backend::Sqlite, &[("real", "exec-a")]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let bad_rule = c.insert_job("bad-rule", "every day at noon", "true").await;
    let bad_group = c
        .insert_job_with(
            "bad-group",
            "* * * * * *",
            "true",
            &[("machine", "ghost".into())],
        )
        .await;
    let good = c.insert_job("good", "* * * * * *", "true").await;

    let error_of = |name: &'static str| {
        let c = &c;
        async move { c.job_by_name(name).await.last_error }
    };
    let rule_error = wait_until("last_error of bad-rule", Duration::from_secs(10), || {
        error_of("bad-rule")
    })
    .await;
    assert_eq!(
        rule_error,
        "invalid rule \"every day at noon\": 4 fields; expected 5 (min hour day month weekday), \
         6 (seconds first) or 7 (seconds first, year last)"
    );
    let group_error = wait_until("last_error of bad-group", Duration::from_secs(10), || {
        error_of("bad-group")
    })
    .await;
    assert_eq!(
        group_error,
        "unknown machine group \"ghost\": not a key of [machine] in conf.ini (known: real)"
    );

    let good_runs = c.wait_for_finished(good, 3, Duration::from_secs(20)).await;
    assert!(
        good_runs
            .iter()
            .filter(|r| r.finished_at.is_some())
            .all(|r| r.status == "succeeded")
    );
    assert!(
        c.runs(bad_rule).await.is_empty(),
        "an invalid rule was scheduled"
    );
    assert!(
        c.runs(bad_group).await.is_empty(),
        "an unknown group was scheduled"
    );

    // Fixing the row clears last_error and schedules it.
    c.sql(
        "UPDATE cron_job SET rule = '* * * * * *' WHERE id = ?",
        vec![bad_rule.into()],
    )
    .await;
    c.wait_for_finished(bad_rule, 1, Duration::from_secs(20))
        .await;
    assert_eq!(c.job_by_name("bad-rule").await.last_error, None);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_runs_record_environment_exit_codes_and_output() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let env = c
        .insert_job(
            "env",
            "* * * * * *",
            "echo \"$GOCRON_JOB_ID|$GOCRON_JOB_NAME|$GOCRON_RUN_ID|$GOCRON_SCHEDULED_AT|$GOCRON_EXECUTOR\"",
        )
        .await;
    let fails = c
        .insert_job(
            "fails",
            "* * * * * *",
            "echo to-stdout; echo to-stderr >&2; echo stdout-again; exit 3",
        )
        .await;
    let signalled = c.insert_job("signalled", "* * * * * *", "kill -9 $$").await;

    let runs = c.wait_for_finished(env, 1, Duration::from_secs(20)).await;
    let r = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
    assert_eq!(r.status, "succeeded");
    assert_eq!(r.exit_code, Some(0));
    let expected = format!(
        "{env}|env|{}|{}|exec-a\n",
        r.id,
        r.scheduled_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    assert_eq!(r.output.as_deref(), Some(expected.as_str()));
    assert!(
        r.executor.starts_with("exec-a@127.0.0.1:"),
        "{}",
        r.executor
    );
    assert!(r.started_at.unwrap() >= r.scheduled_at);
    assert!(r.finished_at.unwrap() >= r.started_at.unwrap());

    let runs = c.wait_for_finished(fails, 1, Duration::from_secs(20)).await;
    let r = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
    assert_eq!(r.status, "failed");
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.error.as_deref(), Some("exited with code 3"));
    // stdout and stderr share one pipe, as with `2>&1`: the output is in the order written.
    assert_eq!(
        r.output.as_deref(),
        Some("to-stdout\nto-stderr\nstdout-again\n")
    );

    let runs = c
        .wait_for_finished(signalled, 1, Duration::from_secs(20))
        .await;
    let r = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
    assert_eq!(r.status, "failed");
    assert_eq!(r.exit_code, None);
    assert_eq!(r.error.as_deref(), Some("killed by signal 9"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_is_read_to_its_end_whichever_of_stdout_and_stderr_closes_first() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    // Far more than a pipe holds on each (64 KiB): a pipe left unread would stop the job.
    let loud = c
        .insert_job(
            "loud",
            "0 0 1 1 *",
            "head -c 200000 /dev/zero | tr '\\0' o; head -c 200000 /dev/zero | tr '\\0' e >&2; \
             echo done >&2",
        )
        .await;
    // stdout closed first: stderr is still read to its end.
    let late = c
        .insert_job(
            "late",
            "0 0 1 1 *",
            "echo early; exec 1>&-; sleep 0.3; echo late >&2",
        )
        .await;
    c.run_now(loud, "").await;
    c.run_now(late, "").await;

    let r = c.wait_for_finished(loud, 1, Duration::from_secs(30)).await;
    assert_eq!(r[0].status, "succeeded", "{:?}", r[0].error);
    let output = r[0].output.as_deref().unwrap();
    // The kept tail (64 KiB, `output_kib`) and the bytes it says it dropped are every byte.
    let (note, kept) = output.split_once('\n').unwrap();
    let dropped: usize = note
        .strip_prefix("[... ")
        .and_then(|n| n.strip_suffix(" earlier bytes dropped ...]"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no note of dropped bytes: {note:?}"));
    assert_eq!(dropped + kept.len(), 400_005);
    assert!(
        kept.ends_with("eeeedone\n"),
        "{:?}",
        &kept[kept.len() - 20..]
    );

    let r = c.wait_for_finished(late, 1, Duration::from_secs(30)).await;
    assert_eq!(r[0].status, "succeeded", "{:?}", r[0].error);
    assert_eq!(r[0].output.as_deref(), Some("early\nlate\n"));
    c.shutdown().await;
}

/// A one-route HTTP server: `/ok` answers 200 "fine", anything else 500 "broken".
async fn http_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if request.starts_with("GET /ok ") {
                    ("200 OK", "fine")
                } else {
                    ("500 Internal Server Error", "broken")
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_jobs_succeed_on_2xx_and_fail_otherwise() {
    let server = http_server().await;
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let ok = c
        .insert_job_with(
            "ok",
            "* * * * * *",
            &format!("http://{server}/ok"),
            &[("kind", "http".into())],
        )
        .await;
    let broken = c
        .insert_job_with(
            "broken",
            "* * * * * *",
            &format!("http://{server}/x"),
            &[("kind", "http".into())],
        )
        .await;
    let runs = c.wait_for_finished(ok, 1, Duration::from_secs(20)).await;
    let r = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
    assert_eq!(
        (r.status.as_str(), r.exit_code, r.output.as_deref()),
        ("succeeded", Some(200), Some("fine"))
    );
    let runs = c
        .wait_for_finished(broken, 1, Duration::from_secs(20))
        .await;
    let r = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
    assert_eq!(r.status, "failed");
    assert_eq!(r.exit_code, Some(500));
    assert_eq!(r.error.as_deref(), Some("HTTP 500 Internal Server Error"));
    c.shutdown().await;
}
