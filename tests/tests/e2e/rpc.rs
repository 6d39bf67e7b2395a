//! Only dispatchers may call executors: the `[rpc] secret` is checked before anything is done.

use std::time::Duration;

use chrono::Utc;
use gocron_shared::job::{JobKind, JobSpec, TimeoutPolicy, Trigger};
use gocron_shared::rpc::{self, Refused, RunRequest, Secret};
use gocron_shared::runs::RunLog;
use gocron_tests::{Backend, Cluster, lines, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_a_wrong_secret_is_refused_and_does_nothing() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    let addr = c.executor_address("exec-a").await;
    let marker = c.path("ran.txt");
    let tick = Utc::now();
    let run_id = RunLog::spawn(c.db.clone())
        .insert(1, tick, Trigger::Manual)
        .await
        .unwrap()
        .unwrap();
    let request = |secret: &str| RunRequest {
        secret: Secret::new(secret),
        run_id,
        job: JobSpec {
            id: 1,
            name: "intruder".into(),
            rule: "@daily".into(),
            command: format!("echo ran >> {}", marker.display()),
            kind: JobKind::Shell,
            machine: String::new(),
            timeout_secs: 0,
            timeout_policy: TimeoutPolicy::Abandon,
            time_zone: String::new(),
            misfire: Default::default(),
        },
        scheduled_ms: tick.timestamp_millis(),
        timeout_ms: 0,
        trigger: Trigger::Manual,
        dispatcher: "intruder".into(),
    };
    let client = rpc::connect(addr, Duration::from_secs(5)).await.unwrap();
    let ctx = || rpc::context(Duration::from_secs(5));

    for wrong in ["", "not-the-secret-at-all-0123456789"] {
        let answer = client.start_run(ctx(), request(wrong)).await.unwrap();
        assert_eq!(answer.unwrap_err(), Refused::Unauthorized);
    }
    // The right secret, same request: it runs. So the refusals above were the secret's doing,
    // and they left the run untouched (still claimable, still `dispatched`).
    let right = c.base_config().rpc.secret;
    let answer = client
        .start_run(
            ctx(),
            RunRequest {
                secret: right,
                ..request("")
            },
        )
        .await
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    wait_until("the authorized run", Duration::from_secs(10), || async {
        (lines(&marker) == ["ran"]).then_some(())
    })
    .await;
    c.shutdown().await;
}
