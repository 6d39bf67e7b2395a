//! Stopping runs: the `kill` timeout policy and the executor's drain on shutdown stop a job's
//! whole process group, children included, and record why.

use std::time::Duration;

use gocron_tests::{Backend, Cluster, executor_name, wait_until};

/// Whether process `pid` is gone (a zombie waiting for its reaper counts as gone).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A job whose shell and child both ignore SIGTERM, writing the child's pid to `pid_file`.
fn stubborn(pid_file: &std::path::Path) -> String {
    format!(
        "trap '' TERM; sh -c 'sleep 300' & echo $! > {}-$GOCRON_RUN_ID; wait",
        pid_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_policy_stops_the_whole_process_group_at_the_timeout() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("EXECUTOR", "KILL_GRACE_SECS", "1");
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let pids = c.path("child");
    let job = c
        .insert_job_with(
            "overrun",
            "* * * * * *",
            &stubborn(&pids),
            &[
                ("timeout_secs", 1.into()),
                ("timeout_policy", "kill".into()),
            ],
        )
        .await;
    let runs = c.wait_for_finished(job, 2, Duration::from_secs(30)).await;
    for r in runs.iter().filter(|r| r.finished_at.is_some()) {
        assert_eq!(r.status, "timeout", "{r:#?}");
        assert_eq!(
            r.error.as_deref(),
            Some("timed out after 1000 ms (policy kill): process group stopped"),
            "{r:#?}"
        );
        // SIGTERM was ignored, so only SIGKILL after the grace ended it.
        let lasted = r.finished_at.unwrap() - r.scheduled_at;
        assert!(
            lasted >= chrono::Duration::milliseconds(1900),
            "{lasted} {r:#?}"
        );
        let pid: u32 = std::fs::read_to_string(format!("{}-{}", pids.display(), r.id))
            .expect("the job wrote its child's pid")
            .trim()
            .parse()
            .unwrap();
        wait_until(
            &format!("child {pid} of run {} gone", r.id),
            Duration::from_secs(5),
            || async { gone(pid).then_some(()) },
        )
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_executor_kills_what_outlives_its_drain() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("EXECUTOR", "DRAIN_SECS", "1");
    c.set("EXECUTOR", "KILL_GRACE_SECS", "1");
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let pids = c.path("child");
    let job = c.insert_job("long", "* * * * * *", &stubborn(&pids)).await;
    wait_until("a run going", Duration::from_secs(20), || async {
        c.runs(job)
            .await
            .iter()
            .any(|r| r.status == "running")
            .then_some(())
    })
    .await;

    c.stop("exec-a").await;
    let runs = c.runs(job).await;
    let on_a: Vec<_> = runs
        .iter()
        .filter(|r| executor_name(r) == "exec-a")
        .collect();
    assert!(!on_a.is_empty());
    for r in on_a {
        assert_eq!(r.status, "killed", "{r:#?}");
        assert_eq!(
            r.error.as_deref(),
            Some("stopped: the executor shut down and its drain time was over")
        );
        let pid: u32 = std::fs::read_to_string(format!("{}-{}", pids.display(), r.id))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_until(
            &format!("child {pid} gone"),
            Duration::from_secs(5),
            || async { gone(pid).then_some(()) },
        )
        .await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_the_jobs_at_once_and_still_records_them() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    // A drain far longer than the test: only the second signal can end it.
    c.set("EXECUTOR", "DRAIN_SECS", "600");
    c.set("EXECUTOR", "KILL_GRACE_SECS", "1");
    let mut executor = c
        .start_executor_process("exec-a", crate::EXECUTOR_PROCESS.as_ref())
        .await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let pids = c.path("child");
    let job = c.insert_job("long", "* * * * * *", &stubborn(&pids)).await;
    let run = wait_until("a run going", Duration::from_secs(20), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.status == "running")
    })
    .await;
    let pid = executor.id().to_string();
    let term = || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
    };
    term();
    // The first signal only starts the drain: the executor leaves etcd and keeps the run going.
    wait_until("exec-a out of etcd", Duration::from_secs(10), || async {
        let mut etcd = c.etcd().await;
        let key = format!("/gocron-test/{}/executors/exec-a", c.id);
        (etcd.get(key, None).await.ok()?.count() == 0).then_some(())
    })
    .await;
    assert!(
        executor.try_wait().unwrap().is_none(),
        "exited on the first signal"
    );
    term();
    let executor = std::sync::Mutex::new(executor);
    let status = wait_until("the executor exited", Duration::from_secs(20), || {
        let exited = executor.lock().unwrap().try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(status.success(), "{status:?}");
    let r = c
        .runs(job)
        .await
        .into_iter()
        .find(|r| r.id == run.id)
        .unwrap();
    assert_eq!(r.status, "killed", "{r:#?}");
    let child: u32 = std::fs::read_to_string(format!("{}-{}", pids.display(), r.id))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        &format!("child {child} gone"),
        Duration::from_secs(5),
        || async { gone(child).then_some(()) },
    )
    .await;
    c.shutdown().await;
}
