//! Many jobs: published jobs beyond one etcd response, and the monitor's change detection.

use std::time::Duration;

use chrono::Utc;
use etcd_client::GetOptions;
use gocron_shared::keys::EtcdKeys;
use gocron_tests::{Backend, Cluster, wait_until};

const WAIT: Duration = Duration::from_secs(60);

/// How many keys are published under the cluster's jobs prefix, and their total size.
async fn published(c: &Cluster) -> (i64, usize) {
    let keys = EtcdKeys::new(&format!("/gocron-test/{}", c.id));
    let mut etcd = c.etcd().await;
    let count = etcd
        .get(
            keys.jobs(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("etcd count")
        .count();
    // The test's own read takes the whole prefix at once, with a client limit raised for it.
    let all = etcd
        .kv_client()
        .max_decoding_message_size(256 * 1024 * 1024)
        .get(keys.jobs(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("etcd read");
    let bytes = all
        .kvs()
        .iter()
        .map(|kv| kv.key().len() + kv.value().len())
        .sum();
    (count, bytes)
}

/// The published value of job `id`, if any.
async fn published_job(c: &Cluster, id: i64) -> Option<serde_json::Value> {
    let keys = EtcdKeys::new(&format!("/gocron-test/{}", c.id));
    let mut etcd = c.etcd().await;
    let response = etcd.get(keys.job(id), None).await.expect("etcd get");
    let kv = response.kvs().first()?;
    Some(serde_json::from_slice(kv.value()).expect("published JSON"))
}

/// 20,000 daily jobs with crontab-length commands (over 4 MiB in etcd, more than one etcd
/// response may carry by default) inserted in one statement: a dispatcher started afterwards
/// holds them all and fires a canary, and a row inserted afterwards goes live at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_started_after_20000_jobs_were_published_fires_them() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_monitor();
    c.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
         INSERT INTO cron_job (name, rule, command) \
         SELECT 'bulk-' || i, (i % 60) || ' ' || (i % 24) || ' * * *', \
                '/usr/local/bin/report --daily --id ' || i || ' --out /var/tmp/report-' || i || \
                '.csv --mail ops@example.com ' || substr(hex(zeroblob(100)), 1, 160) FROM n",
        vec![],
    )
    .await;
    let canary = c.insert_job("canary", "* * * * * *", "echo alive").await;
    let (count, bytes) = wait_until("every job published", WAIT, || async {
        let (count, bytes) = published(&c).await;
        (count == 20_001).then_some((count, bytes))
    })
    .await;
    assert!(
        bytes > 4 * 1024 * 1024,
        "the published jobs take only {bytes} bytes ({count} keys): not beyond 4 MiB"
    );

    c.start_dispatcher("disp-late");
    let runs = c.wait_for_finished(canary, 1, WAIT).await;
    assert_eq!(runs[0].output.as_deref(), Some("alive\n"));

    // Hot add, with the table this size: the first tick a second after the INSERT runs.
    let added_at = Utc::now();
    let job = c.insert_job("hot", "* * * * * *", "echo hot").await;
    let runs = c.wait_for_finished(job, 1, WAIT).await;
    assert!(
        runs[0].scheduled_at <= added_at + chrono::Duration::milliseconds(2000),
        "first tick {} is not within a second of the insert at {added_at}",
        runs[0].scheduled_at
    );
    c.shutdown().await;
}

/// Inserts, updates of any column, deletes and a row changed twice between two polls reach
/// etcd through the change log (the whole-table comparison is put off for an hour, so it is not
/// what brings them).
async fn changes_are_published(backend: Backend) {
    let mut c = Cluster::new(backend, &[("php", "127.0.0.1")]).await;
    c.set("MONITOR", "RECONCILE_SECS", "3600");
    c.start_monitor();
    // The monitor's first comparison of the whole table is done once this one is published.
    let first = c.insert_job("first", "0 3 * * *", "true").await;
    wait_until("the first job published", WAIT, || async {
        published_job(&c, first).await
    })
    .await;

    let job = c.insert_job("changing", "0 4 * * *", "echo one").await;
    let value = wait_until("the inserted job published", WAIT, || async {
        published_job(&c, job).await
    })
    .await;
    assert_eq!(value["command"], "echo one");

    // A column other than the rule.
    c.sql(
        "UPDATE cron_job SET machine = 'php', timeout_secs = 30 WHERE id = ?",
        vec![job.into()],
    )
    .await;
    wait_until("machine and timeout published", WAIT, || async {
        let v = published_job(&c, job).await?;
        (v["machine"] == "php" && v["timeout_secs"] == 30).then_some(())
    })
    .await;

    // Twice in a row, well within one poll: the last value wins.
    c.sql(
        "UPDATE cron_job SET command = 'echo two' WHERE id = ?",
        vec![job.into()],
    )
    .await;
    c.sql(
        "UPDATE cron_job SET command = 'echo three' WHERE id = ?",
        vec![job.into()],
    )
    .await;
    wait_until("the second of two updates published", WAIT, || async {
        let v = published_job(&c, job).await?;
        (v["command"] == "echo three").then_some(())
    })
    .await;

    // Invalid, then fixed: withdrawn with its verdict, then back.
    c.sql(
        "UPDATE cron_job SET machine = 'ghost' WHERE id = ?",
        vec![job.into()],
    )
    .await;
    wait_until("the invalid job withdrawn", WAIT, || async {
        published_job(&c, job).await.is_none().then_some(())
    })
    .await;
    let row = c.job_by_name("changing").await;
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("unknown machine group \"ghost\"")),
        "{row:?}"
    );
    c.sql(
        "UPDATE cron_job SET machine = '' WHERE id = ?",
        vec![job.into()],
    )
    .await;
    wait_until("the fixed job published again", WAIT, || async {
        published_job(&c, job).await
    })
    .await;

    c.sql("DELETE FROM cron_job WHERE id = ?", vec![job.into()])
        .await;
    wait_until("the deleted job withdrawn", WAIT, || async {
        published_job(&c, job).await.is_none().then_some(())
    })
    .await;
    assert!(published_job(&c, first).await.is_some());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_published_on_sqlite() {
    changes_are_published(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_published_on_mariadb() {
    changes_are_published(Backend::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_published_on_postgres() {
    changes_are_published(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_read_whose_pages_are_too_large_asks_for_smaller_ones() {
    use gocron_shared::registry::{PAGE_KEYS, PagedRead};
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let mut etcd = c.etcd().await;
    let prefix = format!("/gocron-test/{}/big/", c.id);
    // 200 values of 20 KiB: 4 MB in all, over the 1 MiB limit this read is given.
    let value = "x".repeat(20 * 1024);
    for i in 0..200 {
        etcd.put(format!("{prefix}{i:04}"), value.as_str(), None)
            .await
            .expect("etcd put");
    }
    let mut read = PagedRead::new(&etcd, &prefix, false).with_message_limit(1024 * 1024);
    let mut keys = Vec::new();
    while let Some(page) = read.next_page().await.expect("the read adapts, not fails") {
        assert!(page.iter().all(|(_, v)| v.len() == value.len()));
        keys.extend(page.into_iter().map(|(k, _)| k));
    }
    let expected: Vec<String> = (0..200).map(|i| format!("{prefix}{i:04}")).collect();
    assert_eq!(keys, expected, "every key once, in order");
    assert!(
        read.page_keys() < PAGE_KEYS && read.page_keys() * 20 * 1024 < 1024 * 1024,
        "pages shrank to fit: {} keys",
        read.page_keys()
    );
    etcd.delete(
        prefix.as_str(),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("etcd delete");
    c.shutdown().await;
}
