//! Alarms: each kind arrives by mail and SMS with its fields; once, deduplicated, quiet-period-
//! and cap-limited; late but complete after an SMTP outage; once with two monitors; one summary
//! after downtime. Against a real SMTP server (aiosmtpd) and an SMS gateway stand-in.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gocron_shared::entity::{alarm, alarm_state, run};
use gocron_tests::alarm::{Mail, SmsGateway, SmtpSink};
use gocron_tests::{Backend, Cluster, wait_until};
use sea_orm::ActiveValue::Set;
use sea_orm::EntityTrait;

const OPS: &str = "ops@example.com";
const WAIT: Duration = Duration::from_secs(60);

/// A cluster whose monitors mail `OPS` through `sink` (and text `+15550001` through `sms`),
/// checking every 200 ms; `extra` are more `[alarm]` keys. The grace is long (no dispatcher
/// alarm in tests without one) unless `extra` shortens it.
pub(crate) async fn alarm_cluster(
    backend: Backend,
    machines: &[(&str, &str)],
    sms: Option<&SmsGateway>,
    extra: &[(&str, &str)],
) -> (Cluster, SmtpSink) {
    let mut c = Cluster::new(backend, machines).await;
    let sink = SmtpSink::start(&c.path("maildir")).await;
    let port = sink.port.to_string();
    let mut keys = vec![
        ("SMTP_HOST", "127.0.0.1"),
        ("SMTP_PORT", port.as_str()),
        ("SMTP_TLS", "none"),
        ("MAIL_FROM", "gocron@example.com"),
        ("MAIL_LIST", OPS),
        ("CHECK_MS", "200"),
        ("GRACE_SECS", "600"),
        ("BASE_URL", "https://cron.example"),
    ];
    let url = sms.map(|s| format!("http://{}/sms?to={{mobile}}", s.addr));
    if let Some(url) = &url {
        keys.push(("SMS_URL", url));
        keys.push(("SMS_MOBILES", "+15550001"));
    }
    keys.extend_from_slice(extra);
    for (k, v) in keys {
        c.set("ALARM", k, v);
    }
    (c, sink)
}

/// When a monitor last finished a pass of its checks (Unix ms).
async fn checked_at(c: &Cluster) -> Option<i64> {
    alarm_state::Entity::find_by_id("checked_at".to_owned())
        .one(&c.db)
        .await
        .expect("query")
        .map(|r| r.value)
}

/// Inserts a run row as another daemon would have written it; returns its id.
async fn insert_run(
    c: &Cluster,
    job_id: i64,
    status: &str,
    executor: &str,
    scheduled_at: DateTime<Utc>,
    overrun_at: Option<DateTime<Utc>>,
) -> i64 {
    let finished = !matches!(status, "dispatched" | "running");
    let row = run::ActiveModel {
        job_id: Set(job_id),
        scheduled_at: Set(scheduled_at),
        status: Set(status.to_owned()),
        executor: Set(executor.to_owned()),
        started_at: Set((status != "dispatched").then_some(scheduled_at)),
        finished_at: Set(finished.then_some(scheduled_at)),
        exit_code: Set(None),
        output: Set(None),
        error: Set(finished.then(|| format!("test row: {status}"))),
        trigger: Set("schedule".to_owned()),
        overrun_at: Set(overrun_at),
        ..Default::default()
    };
    run::Entity::insert(row)
        .exec(&c.db)
        .await
        .expect("insert run")
        .last_insert_id
}

/// A disabled job: runs inserted for it are the test's alone.
async fn quiet_job(c: &Cluster, name: &str) -> i64 {
    c.insert_job_with(name, "0 0 3 * * *", "true", &[("enabled", 0.into())])
        .await
}

fn to_ops(mails: &[Mail]) -> Vec<&Mail> {
    mails
        .iter()
        .filter(|m| m.to.iter().any(|t| t == OPS))
        .collect()
}

fn find<'a>(mails: &'a [Mail], subject: &str) -> Option<&'a Mail> {
    mails.iter().find(|m| m.subject.contains(subject))
}

pub(crate) async fn wait_mail(sink: &SmtpSink, subject: &str) -> Mail {
    let mails = sink
        .wait_for(&format!("a mail {subject:?}"), WAIT, |m| {
            find(m, subject).is_some()
        })
        .await;
    find(&mails, subject).unwrap().clone()
}

fn assert_body(mail: &Mail, needles: &[&str]) {
    for needle in needles {
        assert!(
            mail.body.contains(needle),
            "{needle:?} missing from the mail {:?}:\n{}",
            mail.subject,
            mail.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_alarm_kind_arrives_by_mail_and_sms_with_its_fields() {
    let sms = SmsGateway::start().await;
    let (mut c, sink) = alarm_cluster(
        Backend::Sqlite,
        &[("ghost", "10.9.9.9")],
        Some(&sms),
        &[("GRACE_SECS", "2")],
    )
    .await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    c.wait_checks_started().await;

    // run_failed, from a real run, to the list and the job's own recipients.
    let fails = c
        .insert_job_with(
            "fails",
            "* * * * * *",
            "echo disk full; exit 3",
            &[
                ("alarm_emails", "dev@example.com, not-an-address".into()),
                ("alarm_mobiles", "+15550002".into()),
            ],
        )
        .await;
    let mail = wait_mail(
        &sink,
        &format!("run_failed: job {fails} \"fails\" on exec-a@"),
    )
    .await;
    assert_eq!(mail.to.len(), 2, "{:?}", mail.to);
    assert!(mail.to.contains(&"dev@example.com".to_owned()));
    // The mail arrives a moment before its row is marked sent.
    let row = gocron_tests::wait_until("the sent row", Duration::from_secs(30), || async {
        c.alarms()
            .await
            .into_iter()
            .find(|r| r.kind == "run_failed" && r.channel == "mail" && r.status == "sent")
    })
    .await;
    assert_eq!(
        row.error.as_deref(),
        Some("left out, not mail addresses: not-an-address")
    );
    let run_id: i64 = mail
        .body
        .lines()
        .find_map(|l| l.strip_prefix("run id:")?.trim().parse().ok())
        .expect("a run id line");
    let failed_run = c
        .runs(fails)
        .await
        .into_iter()
        .find(|r| r.id == run_id)
        .unwrap();
    assert_body(
        &mail,
        &[
            &format!("job id:       {fails}"),
            "job name:     fails",
            "rule:         * * * * * *",
            "command:      echo disk full; exit 3",
            "executor:     exec-a@127.0.0.1:",
            &format!(
                "scheduled at: {}",
                failed_run
                    .scheduled_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            "started at:   20",
            "finished at:  20",
            "status:       failed",
            "exit code:    3",
            "error:        exited with code 3",
            "output (tail):\ndisk full",
            &format!("https://cron.example/jobs/{fails}/runs/{run_id}"),
        ],
    );
    let text = format!("gocron run_failed job {fails} fails run {run_id} ");
    let texts = wait_until("the run_failed SMS to both mobiles", WAIT, || {
        let requests = sms.requests();
        let text = text.clone();
        async move {
            let hits: Vec<_> = requests
                .into_iter()
                .filter(|r| r.body.contains(&text))
                .collect();
            (hits.len() >= 2).then_some(hits)
        }
    })
    .await;
    let mut paths: Vec<&str> = texts.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/sms?to=%2B15550001", "/sms?to=%2B15550002"]);
    assert!(texts.iter().all(|r| r.method == "POST"));
    assert!(
        texts[0].body.contains("\"mobile\": \"+1555000"),
        "{texts:?}"
    );

    // recovered: the first success after the failure alarm.
    c.sql(
        "UPDATE cron_job SET command = 'true' WHERE id = ?",
        vec![fails.into()],
    )
    .await;
    let mail = wait_mail(&sink, &format!("recovered: job {fails} \"fails\"")).await;
    assert_body(&mail, &["status:       succeeded", "the job recovered"]);

    // run_failed from a lost run; run_overdue from an overrun and from a run never started.
    let gone = quiet_job(&c, "gone").await;
    let lost = insert_run(&c, gone, "lost", "exec-x@10.0.0.9:7070", Utc::now(), None).await;
    let slow = quiet_job(&c, "slow").await;
    let overrun = insert_run(
        &c,
        slow,
        "running",
        "exec-a@127.0.0.1:1",
        Utc::now() - chrono::Duration::seconds(30),
        Some(Utc::now()),
    )
    .await;
    let stuck = quiet_job(&c, "stuck").await;
    let never = insert_run(
        &c,
        stuck,
        "dispatched",
        "",
        Utc::now() - chrono::Duration::seconds(10),
        None,
    )
    .await;
    let mail = wait_mail(
        &sink,
        &format!("run_failed: job {gone} \"gone\" on exec-x@10.0.0.9:7070"),
    )
    .await;
    assert_body(
        &mail,
        &[&format!("run id:       {lost}"), "status:       lost"],
    );
    let mail = wait_mail(&sink, &format!("run_overdue: job {slow} \"slow\"")).await;
    assert_body(&mail, &[&format!("run id:       {overrun}"), "(overrun)"]);
    let mail = wait_mail(&sink, &format!("run_overdue: job {stuck} \"stuck\"")).await;
    assert_body(
        &mail,
        &[&format!("run id:       {never}"), "has not started"],
    );
    // run_overdue found by the monitor itself (no overrun flag): running past timeout_secs.
    let late = c
        .insert_job_with(
            "late",
            "0 0 3 * * *",
            "sleep 99",
            &[("enabled", 0.into()), ("timeout_secs", 1.into())],
        )
        .await;
    let past = insert_run(
        &c,
        late,
        "running",
        "exec-a@127.0.0.1:1",
        Utc::now() - chrono::Duration::seconds(10),
        None,
    )
    .await;
    let mail = wait_mail(&sink, &format!("run_overdue: job {late} \"late\"")).await;
    assert_body(
        &mail,
        &[
            &format!("run id:       {past}"),
            "is still running past its timeout",
            "(policy abandon)",
        ],
    );
    // skipped (policy abandon) is a run_failed; a missed tick (misfire) is a tick_missed.
    let skips = quiet_job(&c, "skips").await;
    let skipped = insert_run(&c, skips, "skipped", "", Utc::now(), None).await;
    let mail = wait_mail(&sink, &format!("run_failed: job {skips} \"skips\"")).await;
    assert_body(
        &mail,
        &[&format!("run id:       {skipped}"), "status:       skipped"],
    );
    let misses = quiet_job(&c, "misses").await;
    let missed = insert_run(&c, misses, "missed", "", Utc::now(), None).await;
    let mail = wait_mail(&sink, &format!("tick_missed: job {misses} \"misses\"")).await;
    assert_body(&mail, &[&format!("run id:       {missed}"), "was missed"]);

    // job_invalid, and a group whose jobs have no live executor (its runs fail no_executor).
    let bad = c.insert_job("bad", "every day at noon", "true").await;
    let mail = wait_mail(&sink, &format!("job_invalid: job {bad} \"bad\"")).await;
    assert_body(&mail, &["invalid rule \"every day at noon\""]);
    let ghostly = c
        .insert_job_with(
            "ghostly",
            "* * * * * *",
            "true",
            &[("machine", "ghost".into())],
        )
        .await;
    let mail = wait_mail(&sink, "[gocron] group_down: on ").await;
    assert_body(
        &mail,
        &[&format!(
            "machine group \"ghost\" has no live executor; enabled jobs target it: {ghostly}"
        )],
    );
    let mail = wait_mail(&sink, &format!("run_failed: job {ghostly} \"ghostly\"")).await;
    assert_body(&mail, &["status:       no_executor"]);

    // No dispatcher: that alarm, and the every-second job's missed tick.
    c.stop("disp-0").await;
    let mail = wait_mail(&sink, "[gocron] no_dispatcher: on ").await;
    assert_body(&mail, &["no dispatcher is registered"]);
    let mail = wait_mail(&sink, &format!("tick_missed: job {fails} \"fails\"")).await;
    assert_body(&mail, &["has no run after grace_secs = 2"]);

    // Every alarm went to the list, once per kind and subject.
    let mails = sink.mails();
    let ops = to_ops(&mails);
    let mut subjects: Vec<&str> = ops.iter().map(|m| m.subject.as_str()).collect();
    let n = subjects.len();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), n, "a mail was sent twice: {subjects:#?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_period_and_daily_cap_on_sqlite() {
    quiet_period_holds_repeats_into_a_summary_and_the_daily_cap_holds(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_period_and_daily_cap_on_mariadb() {
    quiet_period_holds_repeats_into_a_summary_and_the_daily_cap_holds(Backend::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_period_and_daily_cap_on_postgres() {
    quiet_period_holds_repeats_into_a_summary_and_the_daily_cap_holds(Backend::Postgres).await;
}

async fn quiet_period_holds_repeats_into_a_summary_and_the_daily_cap_holds(backend: Backend) {
    let (mut c, sink) = alarm_cluster(
        backend,
        &[],
        None,
        &[("QUIET_SECS", "2"), ("DAILY_CAP", "4")],
    )
    .await;
    c.start_monitor();
    c.wait_checks_started().await;
    let job = quiet_job(&c, "flaky").await;
    // A failure every 300 ms, as a busy failing job would give, until the cap is reached.
    let feeder = {
        let db = c.db.clone();
        tokio::spawn(async move {
            for i in 0..200i64 {
                let row = run::ActiveModel {
                    job_id: Set(job),
                    scheduled_at: Set(Utc::now() + chrono::Duration::milliseconds(i)),
                    status: Set("failed".into()),
                    executor: Set("exec-a@127.0.0.1:1".into()),
                    error: Set(Some("exited with code 1".into())),
                    trigger: Set("schedule".into()),
                    ..Default::default()
                };
                run::Entity::insert(row).exec(&db).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let capped = |rows: &[alarm::Model]| rows.iter().filter(|r| r.status == "capped").count();
    wait_until("three capped alarms", WAIT, || async {
        (capped(&c.alarms().await) >= 3).then_some(())
    })
    .await;
    feeder.abort();

    let mails = sink.mails();
    assert_eq!(to_ops(&mails).len(), 4, "the cap is 4 a day: {mails:#?}");
    let rows = c.alarms().await;
    for r in rows.iter().filter(|r| r.status == "capped") {
        assert_eq!(
            r.error.as_deref(),
            Some("daily cap of 4 reached for ops@example.com")
        );
    }
    // Sent run_failed alarms are at least the quiet period apart.
    let sent: Vec<DateTime<Utc>> = rows
        .iter()
        .filter(|r| r.kind == "run_failed" && r.status == "sent")
        .map(|r| r.sent_at.unwrap())
        .collect();
    assert!(!sent.is_empty());
    for pair in sent.windows(2) {
        assert!(
            // Claimed at least 2 s apart; sent_at adds each delivery's own latency.
            pair[1] - pair[0] >= chrono::Duration::milliseconds(1000),
            "two run_failed alarms within the quiet period: {sent:?}"
        );
    }
    // Each summary counts exactly the held alarms it stands for, and one was mailed.
    let summaries: Vec<&alarm::Model> = rows.iter().filter(|r| r.kind == "held_summary").collect();
    assert!(!summaries.is_empty(), "no held_summary: {rows:#?}");
    for s in &summaries {
        let last: i64 = s.dedup_key.split(':').nth(3).unwrap().parse().unwrap();
        let held = rows
            .iter()
            .filter(|r| {
                r.error.as_deref()
                    == Some(&format!("counted in the held_summary after alarm {last}"))
            })
            .count();
        assert!(held > 0);
        assert!(
            s.subject.contains(&format!(
                "held_summary: {held} more run_failed alarm(s) of job {job}"
            )),
            "{} does not count {held}",
            s.subject
        );
    }
    assert!(
        mails.iter().any(|m| m.subject.contains("held_summary: ")
            && m.body
                .contains("held back by the quiet period (quiet_secs = 2)")),
        "no summary mail: {mails:#?}"
    );
    // One row per run and channel: the unique key.
    let mut runs: Vec<i64> = rows
        .iter()
        .filter(|r| r.kind == "run_failed")
        .filter_map(|r| r.run_id)
        .collect();
    let n = runs.len();
    runs.dedup();
    assert_eq!(runs.len(), n);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_recorded_while_smtp_is_down_arrive_when_it_is_back() {
    let (mut c, mut sink) = alarm_cluster(Backend::Sqlite, &[], None, &[("QUIET_SECS", "0")]).await;
    sink.down();
    c.start_monitor();
    c.wait_checks_started().await;
    let job = quiet_job(&c, "nightly").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let at = Utc::now() - chrono::Duration::seconds(i);
        ids.push(insert_run(&c, job, "failed", "exec-a@127.0.0.1:1", at, None).await);
    }
    // Visible in the table meanwhile: recorded, retried, with the error.
    wait_until("three alarms retried after SMTP errors", WAIT, || async {
        let rows = c.alarms().await;
        let retried = rows
            .iter()
            .filter(|r| {
                r.status == "pending"
                    && r.attempts >= 2
                    && r.error.as_deref().is_some_and(|e| e.starts_with("SMTP: "))
            })
            .count();
        (retried == 3).then_some(())
    })
    .await;
    assert!(sink.mails().is_empty());

    sink.up().await;
    let mails = sink
        .wait_for("three mails after SMTP is back", WAIT, |m| m.len() >= 3)
        .await;
    for id in &ids {
        let n = mails
            .iter()
            .filter(|m| m.body.contains(&format!("run id:       {id}\n")))
            .count();
        assert_eq!(n, 1, "run {id} alarmed {n} times: {mails:#?}");
    }
    for m in &mails {
        assert!(
            m.message_id.starts_with("<gocron-alarm-") && m.message_id.ends_with("@example.com>"),
            "{m:?}"
        );
    }
    wait_until("the rows say sent", WAIT, || async {
        let rows = c.alarms().await;
        rows.iter()
            .all(|r| r.status == "sent" && r.sent_at.is_some())
            .then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_monitors_send_each_alarm_once_on_sqlite() {
    two_monitors_send_each_alarm_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_monitors_send_each_alarm_once_on_mariadb() {
    two_monitors_send_each_alarm_once(Backend::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_monitors_send_each_alarm_once_on_postgres() {
    two_monitors_send_each_alarm_once(Backend::Postgres).await;
}

async fn two_monitors_send_each_alarm_once(backend: Backend) {
    let sms = SmsGateway::start().await;
    let (mut c, mut sink) = alarm_cluster(backend, &[], Some(&sms), &[("QUIET_SECS", "0")]).await;
    // Down at first, so that both monitors retry the same rows, then race when it is back.
    sink.down();
    c.start_monitor_as("monitor-a");
    c.wait_checks_started().await;
    // Started once a pass is recorded, so that it finds no downtime: started together, the
    // second one's first pass could come after the first rows below, and summarise them in a
    // `start_summary` (as designed) instead of alarming each.
    c.start_monitor_as("monitor-b");
    const N: i64 = 30;
    let job = quiet_job(&c, "twice").await;
    let mut ids = Vec::new();
    for i in 0..N {
        let at = Utc::now() - chrono::Duration::seconds(i);
        ids.push(insert_run(&c, job, "failed", "exec-a@127.0.0.1:1", at, None).await);
    }
    wait_until("every mail alarm retried", WAIT, || async {
        let rows = c.alarms().await;
        let retried = rows
            .iter()
            .filter(|r| r.channel == "mail" && r.attempts >= 3)
            .count();
        (retried >= N as usize).then_some(())
    })
    .await;
    sink.up().await;
    sink.wait_for("every mail", WAIT, |m| m.len() >= N as usize)
        .await;
    wait_until("every SMS", WAIT, || async {
        (sms.requests().len() >= N as usize).then_some(())
    })
    .await;
    // Let both monitors run several more passes: nothing more may arrive.
    let t0 = checked_at(&c).await.unwrap();
    wait_until("two seconds of checks", WAIT, || async {
        (checked_at(&c).await? > t0 + 2000).then_some(())
    })
    .await;
    let mails = sink.mails();
    assert_eq!(mails.len(), N as usize, "{mails:#?}");
    for id in &ids {
        let n = mails
            .iter()
            .filter(|m| m.body.contains(&format!("run id:       {id}\n")))
            .count();
        assert_eq!(n, 1, "run {id} mailed {n} times");
        let n = sms
            .requests()
            .iter()
            .filter(|r| r.body.contains(&format!(" run {id} ")))
            .count();
        assert_eq!(n, 1, "run {id} texted {n} times");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_found_after_downtime_come_in_one_summary() {
    let (mut c, sink) = alarm_cluster(Backend::Sqlite, &[], None, &[("QUIET_SECS", "0")]).await;
    c.start_monitor();
    c.wait_checks_started().await;
    c.stop("monitor").await;

    let job = quiet_job(&c, "during-downtime").await;
    let mut ids = Vec::new();
    for (i, status) in ["failed", "failed", "lost", "timeout"].iter().enumerate() {
        let at = Utc::now() - chrono::Duration::seconds(i as i64);
        ids.push(insert_run(&c, job, status, "exec-a@127.0.0.1:1", at, None).await);
    }
    // Downtime is five check_ms (1 s here) without a pass.
    wait_until("downtime", WAIT, || async {
        (checked_at(&c).await? < Utc::now().timestamp_millis() - 1500).then_some(())
    })
    .await;

    c.start_monitor();
    let mail = wait_mail(&sink, "[gocron] start_summary: on ").await;
    assert_body(
        &mail,
        &["found 4 condition(s) at start", "4 run_failed", "job "],
    );
    for id in &ids {
        assert!(
            mail.body.contains(&format!("run {id} ended")),
            "{}",
            mail.body
        );
    }
    // Normal alarms resume after the first pass.
    let after = insert_run(&c, job, "failed", "exec-a@127.0.0.1:1", Utc::now(), None).await;
    let mails = sink
        .wait_for("the next alarm, on its own", WAIT, |m| m.len() >= 2)
        .await;
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(mails[1].body.contains(&format!("run id:       {after}\n")));
    let rows = c.alarms().await;
    let summarised = rows.iter().filter(|r| r.status == "summarised").count();
    assert_eq!(summarised, 4, "{rows:#?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_when_configured_is_required_not_tried() {
    // aiosmtpd here offers no STARTTLS: the alarm must wait, never go out in plain text.
    let (mut c, sink) = alarm_cluster(
        Backend::Sqlite,
        &[],
        None,
        &[("QUIET_SECS", "0"), ("SMTP_TLS", "starttls")],
    )
    .await;
    // A cap of a past day, which the sender prunes.
    c.sql(
        "INSERT INTO cron_alarm_state (name, value) VALUES ('cap:2000-01-01:ops@example.com', 5)",
        vec![],
    )
    .await;
    c.start_monitor();
    c.wait_checks_started().await;
    let job = quiet_job(&c, "private").await;
    insert_run(&c, job, "failed", "exec-a@127.0.0.1:1", Utc::now(), None).await;
    let row = wait_until("the alarm retried", WAIT, || async {
        c.alarms()
            .await
            .into_iter()
            .find(|r| r.status == "pending" && r.attempts >= 2)
    })
    .await;
    let error = row.error.unwrap_or_default();
    assert!(error.contains("STARTTLS is not supported"), "{error}");
    assert!(sink.mails().is_empty(), "a mail went out without STARTTLS");
    let past = alarm_state::Entity::find_by_id("cap:2000-01-01:ops@example.com".to_owned())
        .one(&c.db)
        .await
        .unwrap();
    assert_eq!(past, None, "the past day's cap was not pruned");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_gateway_errors_are_retried_and_recorded() {
    let sms = SmsGateway::start().await;
    sms.set_failing(true);
    let (mut c, _sink) =
        alarm_cluster(Backend::Sqlite, &[], Some(&sms), &[("QUIET_SECS", "0")]).await;
    c.start_monitor();
    c.wait_checks_started().await;
    let job = c
        .insert_job_with(
            "texted",
            "0 0 3 * * *",
            "true",
            &[("enabled", 0.into()), ("alarm_mobiles", "+15550002".into())],
        )
        .await;
    let run = insert_run(&c, job, "lost", "exec-a@127.0.0.1:1", Utc::now(), None).await;
    let row = wait_until("the SMS alarm retried", WAIT, || async {
        c.alarms()
            .await
            .into_iter()
            .find(|r| r.channel == "sms" && r.attempts >= 2 && r.status == "pending")
    })
    .await;
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("+15550001: SMS gateway answered 503")
            && error.contains("+15550002: SMS gateway answered 503"),
        "{error}"
    );
    assert!(sms.requests().is_empty());

    sms.set_failing(false);
    let texts = wait_until("both SMS delivered", WAIT, || async {
        let r = sms.requests();
        (r.len() >= 2).then_some(r)
    })
    .await;
    wait_until("the row says sent", WAIT, || async {
        c.alarms()
            .await
            .into_iter()
            .find(|r| r.channel == "sms" && r.status == "sent")
    })
    .await;
    let texts: Vec<_> = texts
        .iter()
        .filter(|r| r.body.contains(&format!(" run {run} ")))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert_eq!(sms.requests().len(), 2, "an SMS was sent twice");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_monitor_neither_replays_nor_loses_a_run() {
    // check_ms 500: passes every half second.
    let (mut c, sink) = alarm_cluster(
        Backend::Sqlite,
        &[],
        None,
        &[("QUIET_SECS", "0"), ("CHECK_MS", "500")],
    )
    .await;
    c.start_monitor();
    c.wait_checks_started().await;
    let job = quiet_job(&c, "restarts").await;
    let before = insert_run(&c, job, "failed", "exec-a@127.0.0.1:1", Utc::now(), None).await;
    let open = insert_run(
        &c,
        job,
        "running",
        "exec-a@127.0.0.1:1",
        Utc::now() + chrono::Duration::seconds(1),
        None,
    )
    .await;
    wait_mail(&sink, &format!("run_failed: job {job}")).await;
    wait_until("the running run watched", WAIT, || async {
        let floor = alarm_state::Entity::find_by_id("run_floor".to_owned())
            .one(&c.db)
            .await
            .unwrap()?;
        (floor.value == open).then_some(())
    })
    .await;

    c.stop("monitor").await;
    let during = insert_run(
        &c,
        job,
        "failed",
        "exec-a@127.0.0.1:1",
        Utc::now() + chrono::Duration::seconds(2),
        None,
    )
    .await;
    c.sql(
        "UPDATE cron_run SET status = 'failed', error = 'exited with code 1' WHERE id = ?",
        vec![open.into()],
    )
    .await;
    // A quick restart is the case here, however long the steps above and the monitor's own
    // start take on a busy machine: the last pass is stamped ahead (after downtime, a restarted
    // monitor would summarise instead: conditions_found_after_downtime_come_in_one_summary).
    // The monitor's next pass writes its own time over it.
    c.sql(
        "UPDATE cron_alarm_state SET value = ? WHERE name = 'checked_at'",
        vec![(Utc::now() + WAIT).timestamp_millis().into()],
    )
    .await;
    c.start_monitor();

    let mails = sink
        .wait_for("the runs that failed around the restart", WAIT, |m| {
            m.len() >= 3
        })
        .await;
    let t0 = Utc::now().timestamp_millis();
    wait_until("two more seconds of checks", WAIT, || async {
        (checked_at(&c).await? > t0 + 2000).then_some(())
    })
    .await;
    let mails_after = sink.mails();
    assert_eq!(mails_after.len(), 3, "{mails_after:#?}");
    for id in [before, open, during] {
        let n = mails
            .iter()
            .filter(|m| m.body.contains(&format!("run id:       {id}\n")))
            .count();
        assert_eq!(n, 1, "run {id} alarmed {n} times: {mails:#?}");
    }
    assert!(mails.iter().all(|m| !m.subject.contains("start_summary")));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_smtp_server_never_delays_the_checks_nor_sms() {
    // A server that accepts connections and never says a word: each delivery hangs until its
    // timeout (10 s), while the checks go on recording.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port().to_string();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = hole.accept().await {
            open.push(stream);
        }
    });
    let sms = SmsGateway::start().await;
    let (mut c, _sink) = alarm_cluster(
        Backend::Sqlite,
        &[],
        Some(&sms),
        &[("QUIET_SECS", "0"), ("SMTP_PORT", &port)],
    )
    .await;
    c.start_monitor();
    c.wait_checks_started().await;
    let job = quiet_job(&c, "hangs").await;
    let first = insert_run(&c, job, "failed", "exec-a@127.0.0.1:1", Utc::now(), None).await;
    wait_until("the first alarm stuck in delivery", WAIT, || async {
        c.alarms()
            .await
            .into_iter()
            .find(|r| r.run_id == Some(first) && r.channel == "mail" && r.status == "sending")
    })
    .await;
    let second = insert_run(
        &c,
        job,
        "failed",
        "exec-a@127.0.0.1:1",
        Utc::now() + chrono::Duration::seconds(1),
        None,
    )
    .await;
    // Recorded within a few checks, long before the first delivery's timeout.
    wait_until(
        "the second alarm recorded",
        Duration::from_secs(5),
        || async {
            c.alarms()
                .await
                .into_iter()
                .find(|r| r.run_id == Some(second))
        },
    )
    .await;
    // And its SMS goes out meanwhile: each channel has its own sender.
    let text = format!(" run {second} ");
    wait_until("the second alarm's SMS", Duration::from_secs(5), || {
        let hit = sms.requests().iter().any(|r| r.body.contains(&text));
        async move { hit.then_some(()) }
    })
    .await;
    let first_row = c
        .alarms()
        .await
        .into_iter()
        .find(|r| r.run_id == Some(first) && r.channel == "mail")
        .unwrap();
    assert_eq!(first_row.status, "sending", "{first_row:?}");
    // A monitor that stops hands its cut deliveries back for the next one.
    c.stop("monitor").await;
    let rows: Vec<_> = c
        .alarms()
        .await
        .into_iter()
        .filter(|r| r.channel == "mail")
        .collect();
    assert!(
        rows.iter()
            .all(|r| r.status == "pending" && r.next_attempt_at <= Utc::now()),
        "{rows:#?}"
    );
    c.shutdown().await;
    held.abort();
}
