//! gocronctl against a real cluster's API: jobs added, changed, run, listed and removed, and
//! its exit codes (0 done, 1 refused or unreachable, 2 usage or validation).

use std::time::Duration;

use gocron_ctl::cli::{Outcome, run, run_with};
use gocron_tests::{Backend, Cluster, wait_until};
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

/// `gocronctl --server URL --token TOKEN args...`.
async fn ctl(server: &str, token: &str, args: &[&str]) -> Outcome {
    let mut line = vec!["gocronctl", "--server", server, "--token", token];
    line.extend_from_slice(args);
    run(line.into_iter().map(str::to_owned)).await
}

/// The same with `--json`, parsed; panics unless it succeeded.
async fn ctl_json(server: &str, args: &[&str]) -> Value {
    let mut line = vec!["--json"];
    line.extend_from_slice(args);
    let out = ctl(server, ADMIN, &line).await;
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    serde_json::from_str(&out.out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out:?}"))
}

/// A cluster (an executor, a dispatcher, a monitor serving the API with both tokens) and the
/// API's URL.
async fn cluster() -> (Cluster, String) {
    let mut c = Cluster::new(Backend::Sqlite, &[("local", "127.0.0.1")]).await;
    c.set("HTTP", "ADMIN_TOKEN", ADMIN);
    c.set("HTTP", "VIEWER_TOKEN", VIEWER);
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    let server = format!("http://{}", c.start_monitor_http("monitor").await);
    (c, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gocronctl_manages_jobs_and_runs_through_the_api() {
    let (c, server) = cluster().await;
    let server = server.as_str();

    // Added, then it runs on its own.
    let job = ctl_json(
        server,
        &[
            "job",
            "add",
            "--name",
            "from-ctl",
            "--rule",
            "* * * * * *",
            "--command",
            "echo hello from ctl",
            "--machine",
            "local",
        ],
    )
    .await;
    let id = job["id"].as_i64().expect("id");
    let runs = c.wait_for_finished(id, 1, Duration::from_secs(30)).await;
    let first = runs
        .iter()
        .find(|r| r.finished_at.is_some())
        .expect("a run");
    assert_eq!(first.status, "succeeded");

    // The table names it, and its runs; logs print the output.
    let list = ctl(server, VIEWER, &["jobs", "--q", "from-ctl"]).await;
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.out.starts_with("ID"), "{}", list.out);
    assert!(
        list.out.contains("from-ctl") && list.out.contains("(1 of 1)"),
        "{}",
        list.out
    );
    let runs = ctl(server, VIEWER, &["runs", "--job", &id.to_string()]).await;
    assert!(runs.out.contains("succeeded"), "{runs:?}");
    let header: Vec<&str> = runs
        .out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "ID",
            "SCHEDULED",
            "STATUS",
            "TRIGGER",
            "SHARD",
            "EXECUTOR",
            "EXIT",
            "ERROR"
        ],
        "{runs:?}"
    );
    assert!(runs.out.contains(" schedule "), "{runs:?}");
    let logs = ctl(server, VIEWER, &["logs", &first.id.to_string()]).await;
    assert_eq!(logs.out, "hello from ctl\n", "{logs:?}");

    // Disabled: no more runs; run now still runs it once, through a dispatcher.
    let off = ctl_json(server, &["job", "disable", &id.to_string()]).await;
    assert_eq!(off["enabled"], Value::from(false), "{off}");
    let edited = ctl_json(
        server,
        &["job", "edit", &id.to_string(), "--rule", "@yearly"],
    )
    .await;
    assert_eq!(edited["rule"], "@yearly");
    ctl_json(server, &["job", "enable", &id.to_string()]).await;
    let manual = wait_until("run now taken", Duration::from_secs(60), || async {
        let out = ctl(server, ADMIN, &["--json", "run", &id.to_string()]).await;
        // 504 (exit 1) while no dispatcher has seen the job published again: retried.
        (out.code == 0).then(|| serde_json::from_str::<Value>(&out.out).expect("JSON"))
    })
    .await;
    let run_id = manual["run_id"].as_i64().expect("run id");
    wait_until(
        "the manual run to succeed",
        Duration::from_secs(30),
        || async {
            c.runs(id)
                .await
                .into_iter()
                .find(|r| r.id == run_id && r.status == "succeeded")
        },
    )
    .await;

    // An event, reported twice with one dedup key: one row, the second answer says so.
    let event = ["event", "ctl.done", "--payload", "p", "--dedup-key", "k"];
    let first = ctl_json(server, &event).await;
    assert_eq!(
        (first["name"].as_str(), first["payload"].as_str()),
        (Some("ctl.done"), Some("p"))
    );
    let again = ctl_json(server, &event).await;
    assert_eq!(
        (again["id"].clone(), again["duplicate"].clone()),
        (first["id"].clone(), Value::from(true))
    );

    // Exit codes: a viewer's change is refused (1), an invalid rule is a validation error (2)
    // with the monitor's words, no server is a usage error (2), an unreachable one is 1.
    let refused = ctl(server, VIEWER, &["job", "disable", &id.to_string()]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.err.contains("403"), "{refused:?}");
    let invalid = ctl(
        server,
        ADMIN,
        &[
            "job",
            "add",
            "--name",
            "bad",
            "--rule",
            "61 * * * *",
            "--command",
            "true",
        ],
    )
    .await;
    assert_eq!(invalid.code, 2, "{invalid:?}");
    assert!(invalid.err.contains("422"), "{invalid:?}");
    let no_server = run(["gocronctl", "jobs"].map(str::to_owned)).await;
    assert_eq!(no_server.code, 2, "{no_server:?}");
    let unreachable = ctl("http://127.0.0.1:9", ADMIN, &["jobs"]).await;
    assert_eq!(unreachable.code, 1, "{unreachable:?}");
    let usage = ctl(server, ADMIN, &["job", "frobnicate"]).await;
    assert_eq!(usage.code, 2, "{usage:?}");

    // The cluster as it stands.
    let executors = ctl(server, VIEWER, &["executors"]).await;
    assert!(executors.out.starts_with("NAME"), "{executors:?}");
    assert!(
        executors.out.contains("exec-a") && executors.out.contains("local"),
        "{executors:?}"
    );
    let status = ctl_json(server, &["status"]).await;
    assert_eq!(
        (
            &status["executors"],
            &status["dispatchers"],
            &status["jobs"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "{status}"
    );
    let status = ctl(server, VIEWER, &["status"]).await;
    assert!(status.out.contains("executors: 1"), "{status:?}");

    // Removed.
    let rm = ctl(server, ADMIN, &["job", "rm", &id.to_string()]).await;
    assert_eq!(
        (rm.code, rm.out.as_str()),
        (0, format!("job {id} deleted\n").as_str())
    );
    let gone = ctl(server, ADMIN, &["job", "show", &id.to_string()]).await;
    assert_eq!(gone.code, 1, "{gone:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gocronctl_logs_follow_prints_the_output_as_it_comes_and_exits_0_at_the_end() {
    let (c, server) = cluster().await;
    // A first line, then a wait for a file only this test creates, then a second line.
    let barrier = c.path("go");
    let command = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second",
        barrier.display()
    );
    let job = ctl_json(
        &server,
        &[
            "job",
            "add",
            "--name",
            "follow",
            "--rule",
            "0 0 1 1 *",
            "--command",
            &command,
            "--machine",
            "local",
        ],
    )
    .await;
    let id = job["id"].as_i64().expect("id").to_string();
    let taken = wait_until("run now taken", Duration::from_secs(60), || async {
        let out = ctl(&server, ADMIN, &["--json", "run", &id]).await;
        // 409 until the monitor has published the job: retried.
        (out.code == 0).then(|| serde_json::from_str::<Value>(&out.out).expect("JSON"))
    })
    .await;
    let run_id = taken["run_id"].as_i64().expect("run id").to_string();

    // `logs --follow`, its output caught as it is printed.
    let (printed, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let line = [
        "gocronctl",
        "--server",
        &server,
        "--token",
        VIEWER,
        "logs",
        &run_id,
        "--follow",
    ]
    .map(str::to_owned);
    let follow = tokio::spawn(run_with(line, move |chunk| {
        let _ = printed.send(chunk.to_vec());
        Ok(())
    }));
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while out.len() < "first\n".len() {
            out.extend(
                arrivals
                    .recv()
                    .await
                    .expect("gocronctl ended before the first line"),
            );
        }
    })
    .await
    .expect("the first line within 30 s");
    // Printed while the job waits for the barrier: the run has not ended, gocronctl runs on.
    assert_eq!(String::from_utf8_lossy(&out), "first\n");
    assert!(!follow.is_finished());
    // Marked `running` once it has run for a second (RUNNING_AFTER), while it still waits.
    wait_until(
        "the run marked running",
        Duration::from_secs(10),
        || async {
            let run = ctl_json(&server, &["logs", &run_id]).await;
            (run["status"] == "running").then_some(())
        },
    )
    .await;
    assert!(!follow.is_finished());

    std::fs::write(&barrier, "").expect("the barrier");
    let outcome = tokio::time::timeout(Duration::from_secs(60), follow)
        .await
        .expect("gocronctl to end within 60 s")
        .expect("gocronctl panicked");
    while let Ok(chunk) = arrivals.try_recv() {
        out.extend(chunk);
    }
    assert_eq!((outcome.code, outcome.err.as_str()), (0, ""), "{outcome:?}");
    assert_eq!(String::from_utf8_lossy(&out), "first\nsecond\n");
    let ended = ctl_json(&server, &["logs", &run_id]).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");

    // An ended run: the recorded output, at once; an unknown run: exit 1.
    let again = ctl(&server, VIEWER, &["logs", &run_id, "--follow"]).await;
    assert_eq!(
        (again.code, again.out.as_str()),
        (0, "first\nsecond\n"),
        "{again:?}"
    );
    let unknown = ctl(&server, VIEWER, &["logs", "999999", "-f"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.err.contains("404"), "{unknown:?}");
    c.shutdown().await;
}
