//! Chains (`on_success`, `on_failure`): when a run ends so, each job the column names (by id or
//! by name) runs once for it (`trigger = chain`, `source_id` and `GOCRON_PARENT_RUN_ID` the
//! parent run), with two dispatchers racing; a job naming an unknown job, or closing a cycle,
//! is refused with a clear `last_error`.

use std::time::Duration;

use gocron_shared::entity::run;
use gocron_tests::{Backend, Cluster, lines, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// A command that appends `GOCRON_PARENT_RUN_ID` to `file`.
fn recorder(file: &std::path::Path) -> String {
    format!("echo \"$GOCRON_PARENT_RUN_ID\" >> {}", file.display())
}

/// (trigger, source_id, status) of each run.
fn shape(runs: &[run::Model]) -> Vec<(String, i64, String)> {
    runs.iter()
        .map(|r| (r.trigger.clone(), r.source_id, r.status.clone()))
        .collect()
}

fn s(text: &str) -> String {
    text.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_jobs_run_once_per_parent_run_on_success_and_on_failure() {
    chained(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_on_postgres() {
    chained(Backend::Postgres).await;
}

async fn chained(backend: Backend) {
    let mut c = Cluster::new(backend, &[]).await;
    c.set("ALARM", "CHECK_MS", "200");
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_dispatcher("disp-1");
    c.start_monitor();
    // A parent run written before the monitor's first pass would not be chained.
    c.wait_checks_started().await;
    let (ok_file, named_file, fail_file) =
        (c.path("ok.txt"), c.path("named.txt"), c.path("fail.txt"));
    // Once a year: the only parent runs are the manual ones.
    let yearly = "0 0 1 1 *";
    let next = c.insert_job("next", yearly, &recorder(&ok_file)).await;
    let named = c
        .insert_job("by name", yearly, &recorder(&named_file))
        .await;
    // Fails its first attempt: its retry is told the same parent.
    let cleanup = c
        .insert_job_with(
            "cleanup",
            yearly,
            &format!(
                "{}; [ $(wc -l < {}) -ge 2 ]",
                recorder(&fail_file),
                fail_file.display()
            ),
            &[("retries", 1.into()), ("retry_delay_secs", 1.into())],
        )
        .await;
    let chain = |ok: String| {
        vec![
            ("on_success", ok.into()),
            ("on_failure", cleanup.to_string().into()),
        ]
    };
    let good = c
        .insert_job_with("good", yearly, "true", &chain(format!("{next}, by name")))
        .await;
    let bad = c
        .insert_job_with("bad", yearly, "exit 3", &chain(String::new()))
        .await;
    c.run_now(good, "").await;
    c.run_now(bad, "").await;
    let good_run = c.wait_for_finished(good, 1, WAIT).await[0].id;
    let bad_run = c.wait_for_finished(bad, 1, WAIT).await[0].id;
    // Success starts on_success's jobs, failure on_failure's: each once, told its parent.
    for (job, file, parent) in [(next, &ok_file, good_run), (named, &named_file, good_run)] {
        let runs = c.wait_for_finished(job, 1, WAIT).await;
        assert_eq!(
            shape(&runs),
            [(s("chain"), parent, s("succeeded"))],
            "job {job}"
        );
        let parent_row = &c.runs(good).await[0];
        assert_eq!(
            runs[0].scheduled_at.timestamp_millis(),
            parent_row.finished_at.unwrap().timestamp_millis(),
            "due when the parent ended"
        );
        assert_eq!(lines(file), [parent.to_string()]);
    }
    let runs = c.wait_for_finished(cleanup, 2, WAIT).await;
    assert_eq!(
        shape(&runs),
        [
            (s("chain"), bad_run, s("failed")),
            (s("retry"), runs[0].id, s("succeeded"))
        ]
    );
    assert_eq!(
        lines(&fail_file),
        [bad_run.to_string(), bad_run.to_string()]
    );
    // Nothing more: the requests are served, once.
    wait_until("no chain request left", WAIT, || async {
        (c.etcd_keys_under(c.etcd_keys().chains()).await == 0).then_some(())
    })
    .await;
    for (job, n) in [(next, 1), (named, 1), (cleanup, 2)] {
        assert_eq!(c.runs(job).await.len(), n, "job {job}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_to_an_unknown_job_or_closing_a_cycle_is_refused() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_monitor();
    let yearly = "0 0 1 1 *";
    let a = c.insert_job("a", yearly, "true").await;
    let b = c
        .insert_job_with("b", yearly, "true", &[("on_success", a.to_string().into())])
        .await;
    // a → b → a: a closes the cycle.
    c.sql(
        "UPDATE cron_job SET on_failure = ? WHERE id = ?",
        vec!["b".into(), a.into()],
    )
    .await;
    let ghost = c
        .insert_job_with("ghost", yearly, "true", &[("on_success", "nobody".into())])
        .await;
    let this = c
        .insert_job_with("self", yearly, "true", &[("on_success", "self".into())])
        .await;
    for (name, want) in [
        ("a", format!("chain cycle: {a} → {b} → {a}")),
        (
            "ghost",
            "on_success: there is no job named \"nobody\"".to_owned(),
        ),
        ("self", format!("chain cycle: {this} → {this}")),
    ] {
        let error = wait_until("the verdict", WAIT, || async {
            c.job_by_name(name).await.last_error
        })
        .await;
        assert_eq!(error, want, "job {name}");
    }
    // Mended: the verdict goes.
    c.sql(
        "UPDATE cron_job SET on_success = ? WHERE id = ?",
        vec!["a".into(), ghost.into()],
    )
    .await;
    wait_until("ghost valid", WAIT, || async {
        c.job_by_name("ghost")
            .await
            .last_error
            .is_none()
            .then_some(())
    })
    .await;
    c.shutdown().await;
}
