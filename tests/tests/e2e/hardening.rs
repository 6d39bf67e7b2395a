//! Nothing stuck, nothing silent, nothing leaked: output of any bytes is recorded as text, a
//! job's environment is its own, an executor's port takes bounded connections and frames, and
//! an HTTP job ends at its deadline.

use chrono::Utc;
use gocron_shared::job::{RunStatus, Trigger};
use gocron_shared::runs::{Outcome, RunLog};
use gocron_tests::{Backend, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_error_is_not_taken_for_an_already_final_row() {
    // PostgreSQL refuses NUL in text: the write fails, and must say so (the caller retries)
    // rather than answer "the row was not in flight".
    let c = Cluster::new(Backend::Postgres, &[]).await;
    let log = RunLog::spawn(c.db.clone());
    let id = log
        .insert(1, Utc::now(), Trigger::Manual)
        .await
        .unwrap()
        .unwrap();
    let outcome = |output: &str| Outcome {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        error: None,
        output: output.into(),
    };
    let refused = log.finish(id, "a@1", Utc::now(), outcome("a\0b")).await;
    assert!(refused.is_err(), "{refused:?}");
    // The row is still in flight: a good outcome is then recorded, and only once.
    assert!(
        log.finish(id, "a@1", Utc::now(), outcome("ab"))
            .await
            .unwrap()
    );
    assert!(
        !log.finish(id, "a@1", Utc::now(), outcome("ab"))
            .await
            .unwrap()
    );
    c.shutdown().await;
}
