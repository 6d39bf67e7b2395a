//! Timeout policies `abandon` and `sync`, lost runs, run-now and kill, failover and restarts,
//! with real processes.

use std::time::Duration;

use gocron_shared::control::{self, ControlError};
use gocron_shared::keys::EtcdKeys;
use gocron_shared::rpc::{Secret, Tls};
use gocron_tests::{Backend, Cluster, assert_one_run_per_tick, executor_name, wait_until};
use sea_orm::entity::prelude::DateTimeUtc;

/// A job command that records its shell's pid in `{dir}/pid-{run id}`, then sleeps `secs`.
fn sleeper(c: &Cluster, secs: &str) -> String {
    format!(
        "echo $$ > {}/pid-$GOCRON_RUN_ID; exec sleep {secs}",
        c.dir.path().display()
    )
}

fn pid_of(c: &Cluster, run_id: i64) -> Option<i32> {
    std::fs::read_to_string(c.path(&format!("pid-{run_id}")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn executed(runs: &[gocron_shared::entity::run::Model]) -> Vec<&gocron_shared::entity::run::Model> {
    runs.iter().filter(|r| r.status != "skipped").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandon_skips_ticks_while_the_previous_run_is_live_and_flags_the_overrun() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    // Every second, lasting 2.5 s: the timeout (until the next tick) passes after 1 s.
    let job = c.insert_job("slow", "* * * * * *", "sleep 2.5").await;
    let runs = wait_until("two finished runs", Duration::from_secs(40), || async {
        let runs = c.runs(job).await;
        (runs.iter().filter(|r| r.status == "succeeded").count() >= 2).then_some(runs)
    })
    .await;
    let done: Vec<_> = runs.iter().filter(|r| r.status == "succeeded").collect();
    // Never two runs at once: each starts after the one before has finished.
    for pair in done.windows(2) {
        assert!(
            pair[1].started_at.unwrap() >= pair[0].finished_at.unwrap(),
            "runs overlap: {pair:#?}"
        );
    }
    for r in &done {
        assert!(r.overrun_at.is_some(), "overrun not flagged: {r:#?}");
    }
    // The ticks in between were recorded as skipped, naming the run they waited on.
    let first = done[0];
    let skipped: Vec<_> = runs
        .iter()
        .filter(|r| r.status == "skipped" && r.scheduled_at > first.scheduled_at)
        .filter(|r| r.scheduled_at < first.finished_at.unwrap())
        .collect();
    assert!(!skipped.is_empty(), "no skipped tick: {runs:#?}");
    for r in skipped {
        let error = r.error.as_deref().unwrap_or("");
        assert!(
            error.starts_with(&format!(
                "run {} of this job is still running on exec-a@",
                first.id
            )),
            "{r:#?}"
        );
        assert!(r.finished_at.is_some(), "{r:#?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_starts_ticks_alongside_and_flags_the_overrun() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c
        .insert_job_with(
            "slow",
            "* * * * * *",
            "sleep 2.5",
            &[("timeout_policy", "sync".into())],
        )
        .await;
    let runs = c.wait_for_finished(job, 3, Duration::from_secs(40)).await;
    assert!(
        runs.iter().all(|r| r.status != "skipped"),
        "sync never skips: {runs:#?}"
    );
    let done: Vec<_> = runs.iter().filter(|r| r.status == "succeeded").collect();
    assert!(done.len() >= 3, "{runs:#?}");
    assert!(
        done.windows(2)
            .any(|pair| pair[1].started_at.unwrap() < pair[0].finished_at.unwrap()),
        "no two runs ran at once: {done:#?}"
    );
    for r in &done {
        assert!(r.overrun_at.is_some(), "overrun not flagged: {r:#?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_executor_is_killed_becomes_lost_and_the_next_tick_runs_elsewhere() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("EXECUTOR", "DRAIN_SECS", "0");
    let mut victim = c
        .start_executor_process("exec-a", crate::EXECUTOR_PROCESS.as_ref())
        .await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c
        .insert_job("long", "* * * * * *", &sleeper(&c, "300"))
        .await;
    let first = wait_until("a run going on exec-a", Duration::from_secs(20), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.status == "running" && executor_name(r) == "exec-a")
    })
    .await;
    victim.kill().expect("SIGKILL the executor");
    victim.wait().expect("reaping the executor");
    c.start_executor("exec-b").await;

    let lost = wait_until("the run lost", Duration::from_secs(30), || async {
        let runs = c.runs(job).await;
        runs.into_iter()
            .find(|r| r.id == first.id && r.status == "lost")
    })
    .await;
    assert!(
        lost.error
            .as_deref()
            .unwrap_or("")
            .starts_with("lost: executor exec-a@"),
        "{lost:#?}"
    );
    let next = wait_until("a later run on exec-b", Duration::from_secs(30), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.scheduled_at > first.scheduled_at && executor_name(r) == "exec-b")
    })
    .await;
    // While exec-a's run still counted as live, the ticks were skipped, never run.
    let runs = c.runs(job).await;
    let between: Vec<_> = runs
        .iter()
        .filter(|r| r.scheduled_at > first.scheduled_at && r.scheduled_at < next.scheduled_at)
        .collect();
    assert!(
        between.iter().all(|r| r.status == "skipped"),
        "{between:#?}"
    );
    // The orphan of the killed executor is this test's to clean up (see the README).
    if let Some(pid) = pid_of(&c, first.id) {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_goes_through_the_dispatchers_and_kill_stops_the_run() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_dispatcher("disp-1");
    c.start_monitor();
    // Once a year: every run here is a manual one.
    let job = c
        .insert_job("yearly", "0 0 1 1 *", &sleeper(&c, "300"))
        .await;
    let config = c.base_config();
    let keys = EtcdKeys::new(&config.etcd.prefix);
    let etcd = c.etcd().await;
    let requested = c.run_now(job, "").await;
    let run = wait_until("the manual run going", Duration::from_secs(20), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.status == "running" && pid_of(&c, r.id).is_some())
    })
    .await;
    assert_eq!(run.trigger, "manual");
    assert_eq!(run.scheduled_at, requested);
    // Two dispatchers saw the request; one ran it, and it no longer waits in etcd.
    wait_until("the request served", Duration::from_secs(10), || {
        let mut etcd = etcd.clone();
        let prefix = keys.manual();
        async move {
            let found = etcd
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .ok()?;
            (found.count() == 0).then_some(())
        }
    })
    .await;

    let fences = c.fences().await;
    let secret = config.rpc.secret.clone();
    let tls = Tls::load(&config.rpc).unwrap();
    let timeout = Duration::from_secs(5);
    control::kill_run(&fences, &secret, &tls, job, run.id, "test", timeout)
        .await
        .unwrap();
    let killed = c.wait_for_finished(job, 1, Duration::from_secs(20)).await;
    let killed = killed.iter().find(|r| r.id == run.id).unwrap();
    assert_eq!(killed.status, "killed", "{killed:#?}");
    assert_eq!(
        killed.error.as_deref(),
        Some("killed on request of test: process group stopped")
    );
    let pid = pid_of(&c, run.id).unwrap();
    wait_until(
        "the job's process gone",
        Duration::from_secs(10),
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    // It is no longer in flight, and a wrong secret is refused before anything is looked at.
    assert!(matches!(
        control::kill_run(&fences, &secret, &tls, job, run.id, "test", timeout).await,
        Err(ControlError::NotInFlight(id)) if id == run.id
    ));

    // The job is free again: a second request runs it again.
    let again: DateTimeUtc = c.run_now(job, "").await;
    let second = wait_until("a second manual run", Duration::from_secs(20), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.scheduled_at == again && r.status == "running")
    })
    .await;
    let wrong = Secret::new("not-the-secret-0123456789");
    assert!(matches!(
        control::kill_run(&fences, &wrong, &tls, job, second.id, "test", timeout).await,
        Err(ControlError::Refused(
            _,
            gocron_shared::rpc::Refused::Unauthorized
        ))
    ));
    control::kill_run(&fences, &secret, &tls, job, second.id, "test", timeout)
        .await
        .unwrap();
    c.wait_for_finished(job, 2, Duration::from_secs(20)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_fail_over_from_an_executor_that_refuses_and_happen_once() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    // exec-bad's secret differs from the dispatcher's: it refuses every run.
    c.start_executor_with(
        "exec-bad",
        &[("RPC", "SECRET", "another-secret-0123456789")],
    )
    .await;
    c.start_executor("exec-good").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c.insert_job("tick", "* * * * * *", "true").await;
    let runs = c.wait_for_finished(job, 6, Duration::from_secs(30)).await;
    let finished: Vec<_> = runs
        .into_iter()
        .filter(|r| r.finished_at.is_some())
        .collect();
    for r in &finished {
        assert_eq!(r.status, "succeeded", "{r:#?}");
        assert_eq!(executor_name(r), "exec-good", "{r:#?}");
    }
    assert_one_run_per_tick(&finished, chrono::Duration::seconds(1));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_dispatchers_misses_and_doubles_no_tick() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-1");
    c.start_dispatcher("disp-2");
    c.start_monitor();
    let job = c.insert_job("tick", "* * * * * *", "true").await;
    c.wait_for_finished(job, 3, Duration::from_secs(30)).await;
    // One by one, each dispatcher is stopped (SIGTERM's path) and a new one started.
    c.stop("disp-1").await;
    c.start_dispatcher("disp-1b");
    let n = c.runs(job).await.len();
    c.wait_for_finished(job, n + 3, Duration::from_secs(30))
        .await;
    c.stop("disp-2").await;
    c.start_dispatcher("disp-2b");
    let n = c.runs(job).await.len();
    c.wait_for_finished(job, n + 3, Duration::from_secs(30))
        .await;
    let runs: Vec<_> = c
        .runs(job)
        .await
        .into_iter()
        .filter(|r| r.finished_at.is_some())
        .collect();
    assert!(executed(&runs).len() == runs.len(), "{runs:#?}");
    for r in &runs {
        assert_eq!(r.status, "succeeded", "{r:#?}");
    }
    assert_one_run_per_tick(&runs, chrono::Duration::seconds(1));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_leaves_a_background_process_ends_with_its_main_process_and_says_so() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let pids = c.path("straggler");
    // The background sleep keeps the output pipes open and outlives the job's shell.
    let command = format!(
        "sleep 300 & echo $! > {}-$GOCRON_RUN_ID; echo main done",
        pids.display()
    );
    let job = c.insert_job("forks", "0 0 1 1 *", &command).await;
    c.run_now(job, "").await;
    let runs = c.wait_for_finished(job, 1, Duration::from_secs(20)).await;
    let r = &runs[0];
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let straggler: i32 = std::fs::read_to_string(format!("{}-{}", pids.display(), r.id))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let output = r.output.as_deref().unwrap_or("");
    assert!(output.starts_with("main done\n"), "{output:?}");
    assert!(
        output.contains("[gocron: the job exited, but processes of its group ")
            && output.ends_with(" were still running]\n"),
        "{output:?}"
    );
    assert!(
        alive(straggler),
        "the straggler is left alone, only reported"
    );
    let _ = std::process::Command::new("kill")
        .arg(straggler.to_string())
        .status();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_the_configured_user() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a user named nobody");
    if !nix::unistd::geteuid().is_root() {
        // Not root: the executor refuses to start rather than run jobs as the wrong user.
        let mut config = c.base_config();
        config.executor.run_as = "nobody".into();
        let err = gocron_executor::run(config, tokio_util::sync::CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("needs an executor running as root"),
            "{err:#}"
        );
        return;
    }
    c.start_executor_with("exec-a", &[("EXECUTOR", "RUN_AS", "nobody")])
        .await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c
        .insert_job(
            "who",
            "* * * * * *",
            "echo $(id -u) $(id -g) $(id -G) $USER $HOME",
        )
        .await;
    let runs = c.wait_for_finished(job, 1, Duration::from_secs(20)).await;
    let r = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    assert_eq!(
        r.output.as_deref(),
        Some(format!("{uid} {gid} {gid} nobody {}\n", nobody.dir.display()).as_str())
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_executor_keeps_its_runs_live_until_they_end() {
    // exec-a alone serves group g: once it stops taking runs, a tick finding the job free
    // would be recorded no_executor; while its run is live, ticks are skipped instead.
    let mut c = Cluster::new(Backend::Sqlite, &[("g", "exec-a")]).await;
    c.set("EXECUTOR", "DRAIN_SECS", "60");
    let mut executor = c
        .start_executor_process("exec-a", crate::EXECUTOR_PROCESS.as_ref())
        .await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    // Longer than the lease TTL (6 s) plus a sweep: a drain must not make the run lost.
    let job = c
        .insert_job_with(
            "long",
            "* * * * * *",
            "sleep 10",
            &[("machine", "g".into())],
        )
        .await;
    let run = wait_until("a run going", Duration::from_secs(20), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.status == "running")
    })
    .await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &executor.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let done = c.wait_for_finished(job, 1, Duration::from_secs(30)).await;
    let exited = executor.wait().unwrap();
    assert!(exited.success(), "{exited:?}");
    let settled = wait_until("the run recorded", Duration::from_secs(30), || async {
        c.runs(job)
            .await
            .into_iter()
            .find(|r| r.id == run.id && r.status != "running")
    })
    .await;
    assert_eq!(settled.status, "succeeded", "{settled:#?}");
    let during: Vec<_> = c
        .runs(job)
        .await
        .into_iter()
        .filter(|r| r.scheduled_at > run.scheduled_at)
        .filter(|r| r.scheduled_at < settled.finished_at.unwrap() - chrono::Duration::seconds(1))
        .collect();
    assert!(!during.is_empty(), "{done:#?}");
    assert!(
        during.iter().all(|r| r.status == "skipped"),
        "ticks during the drain: {during:#?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_now_request_that_comes_before_its_job_is_served_when_the_job_does() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    // No monitor yet: the row is not published, and the request reaches the dispatcher first.
    let job = c.insert_job("early", "0 0 1 1 *", "echo early").await;
    let keys = EtcdKeys::new(&c.base_config().etcd.prefix);
    let requested = control::run_now(&mut c.etcd().await, &keys, job, "")
        .await
        .expect("run-now request");
    c.start_monitor();
    let runs = c.wait_for_finished(job, 1, Duration::from_secs(30)).await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(
        (runs[0].trigger.as_str(), runs[0].status.as_str()),
        ("manual", "succeeded")
    );
    assert_eq!(runs[0].scheduled_at, requested);
    c.shutdown().await;
}
