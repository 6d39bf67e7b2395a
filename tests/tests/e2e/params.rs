//! A shell job's own environment and working directory (`cron_job.env`, `cron_job.workdir`),
//! and a run-now's variables for that run only.

use std::time::Duration;

use gocron_shared::control;
use gocron_shared::keys::EtcdKeys;
use gocron_tests::{Backend, Cluster, lines, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_with_its_env_in_its_workdir_and_a_run_now_adds_its_own_variables() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let workdir = c.path("work");
    std::fs::create_dir(&workdir).unwrap();
    let out = c.path("out.txt");
    // Once a year: only the manual runs run.
    let command = format!(
        "printf '%s|%s|%s|%s\\n' \"$GREETING\" \"$PATH\" \"$(pwd)\" \"${{EXTRA:-none}}\" >> {}",
        out.display()
    );
    let env = "# the job's own\nGREETING=\"hello world\"\nPATH=/opt/app/bin:/usr/bin:/bin\n";
    let job = c
        .insert_job_with(
            "with-env",
            "0 0 1 1 *",
            &command,
            &[
                ("env", env.into()),
                ("workdir", workdir.to_str().unwrap().into()),
            ],
        )
        .await;
    c.run_now(job, "").await;
    let first = format!(
        "hello world|/opt/app/bin:/usr/bin:/bin|{}|none",
        workdir.display()
    );
    wait_until("the plain run", Duration::from_secs(20), || async {
        (lines(&out) == [first.clone()]).then_some(())
    })
    .await;
    // The run's own variables come on top of the job's, replacing one of the same name.
    c.run_now(job, "EXTRA=1\nGREETING=override").await;
    let second = format!(
        "override|/opt/app/bin:/usr/bin:/bin|{}|1",
        workdir.display()
    );
    wait_until(
        "the run with variables",
        Duration::from_secs(20),
        || async { (lines(&out) == [first.clone(), second.clone()]).then_some(()) },
    )
    .await;
    // ... for that run only.
    c.run_now(job, "").await;
    wait_until("a plain run again", Duration::from_secs(20), || async {
        (lines(&out) == [first.clone(), second.clone(), first.clone()]).then_some(())
    })
    .await;
    assert!(
        c.runs(job).await.iter().all(|r| r.status == "succeeded"),
        "{:#?}",
        c.runs(job).await
    );
    // A run-now's variables are checked like the column.
    let keys = EtcdKeys::new(&c.base_config().etcd.prefix);
    let refused = control::run_now(&mut c.etcd().await, &keys, job, "GOCRON_JOB_ID=9").await;
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("GOCRON_JOB_ID is gocron's own"),
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_env_is_a_last_error_and_a_missing_workdir_a_failed_run_that_says_so() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let bad = c
        .insert_job_with(
            "bad-env",
            "* * * * * *",
            "true",
            &[("env", "A=1\nthis is not a pair".into())],
        )
        .await;
    let gone = c.path("not-there");
    let missing = c
        .insert_job_with(
            "missing-workdir",
            "* * * * * *",
            "true",
            &[("workdir", gone.to_str().unwrap().into())],
        )
        .await;
    let error = wait_until(
        "the bad row's last_error",
        Duration::from_secs(20),
        || async { c.job_by_name("bad-env").await.last_error },
    )
    .await;
    assert_eq!(error, "env line 2: \"this is not a pair\" is not KEY=VALUE");
    let runs = c
        .wait_for_finished(missing, 1, Duration::from_secs(20))
        .await;
    let run = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
    assert_eq!(run.status, "failed", "{run:#?}");
    let why = run.error.as_deref().unwrap_or_default();
    assert!(
        why.contains(&format!("in workdir {}", gone.display())),
        "{why:?}"
    );
    assert!(c.runs(bad).await.is_empty(), "the bad row never runs");
    c.shutdown().await;
}
