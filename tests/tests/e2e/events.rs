//! Events (`cron_event`, rule `@event NAME`): an event inserted with plain SQL runs every
//! enabled job subscribed to its name once (with two dispatchers racing, several events in
//! the same instant, a duplicate `dedup_key`, a delay), its payload in the environment and on
//! stdin; an event inserted while no dispatcher runs waits in etcd, and a delayed one that comes
//! due meanwhile takes its job's misfire policy.

use std::time::Duration;

use gocron_shared::entity::{event, run};
use gocron_tests::{Backend, Cluster, lines, wait_until};
use sea_orm::{EntityTrait, QueryOrder};

const WAIT: Duration = Duration::from_secs(60);

/// A command that appends `id|name|payload|stdin` to `file`.
fn recorder(file: &std::path::Path) -> String {
    let file = file.display();
    format!(
        "printf '%s|%s|%s|%s\\n' \"$GOCRON_EVENT_ID\" \"$GOCRON_EVENT_NAME\" \"$GOCRON_EVENT_PAYLOAD\" \"$(cat)\" >> {file}"
    )
}

/// The event requests waiting in etcd.
async fn requests(c: &Cluster) -> usize {
    c.etcd_keys_under(c.etcd_keys().events()).await
}

/// Inserts an event with plain SQL, as a business system would; returns the rows inserted
/// (0: refused as a duplicate).
async fn insert_event(c: &Cluster, name: &str, payload: &str, dedup: Option<&str>) -> u64 {
    c.sql(
        "INSERT INTO cron_event (name, payload, dedup_key) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        vec![name.into(), payload.into(), dedup.map(str::to_owned).into()],
    )
    .await
}

async fn events(c: &Cluster) -> Vec<event::Model> {
    event::Entity::find()
        .order_by_asc(event::Column::Id)
        .all(&c.db)
        .await
        .expect("query")
}

/// (trigger, source_id, status) of each run, in source order.
fn shape(runs: &[run::Model]) -> Vec<(String, i64, String)> {
    let mut shape: Vec<_> = runs
        .iter()
        .map(|r| (r.trigger.clone(), r.source_id, r.status.clone()))
        .collect();
    shape.sort();
    shape
}

fn s(text: &str) -> String {
    text.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_runs_each_subscribed_job_once() {
    subscribed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_postgres() {
    subscribed(Backend::Postgres).await;
}

async fn subscribed(backend: Backend) {
    let mut c = Cluster::new(backend, &[]).await;
    c.start_executor("exec-a").await;
    c.start_executor("exec-b").await;
    // Two dispatchers race for every event's run, as for every tick.
    c.start_dispatcher("disp-0");
    c.start_dispatcher("disp-1");
    c.start_monitor();
    let (a, b, slow) = (c.path("a.txt"), c.path("b.txt"), c.path("slow.txt"));
    let a_id = c.insert_job("a", "@event order.paid", &recorder(&a)).await;
    let b_id = c.insert_job("b", "@EVENT order.paid", &recorder(&b)).await;
    let slow_id = c
        .insert_job_with(
            "slow",
            "@event order.paid",
            &recorder(&slow),
            &[("delay_secs", 2.into())],
        )
        .await;
    let other = c.insert_job("other", "@event order.refunded", "true").await;
    let off = c
        .insert_job_with("off", "@event order.paid", "true", &[("enabled", 0.into())])
        .await;
    for id in [a_id, b_id, slow_id, other] {
        c.wait_published(id).await;
    }
    // Three events in one statement: the same instant, three runs of each job.
    c.sql(
        "INSERT INTO cron_event (name, payload, dedup_key) VALUES \
         ('order.paid', 'order 1', 'o1'), ('order.paid', 'order 2', 'o2'), ('order.paid', NULL, NULL)",
        vec![],
    )
    .await;
    // The same order reported again: refused by the unique key, so it fires once.
    assert_eq!(
        insert_event(&c, "order.paid", "order 1 again", Some("o1")).await,
        0
    );
    let stored = events(&c).await;
    assert_eq!(stored.len(), 3);
    let ids: Vec<i64> = stored.iter().map(|e| e.id).collect();
    let want: Vec<_> = ids
        .iter()
        .map(|id| (s("event"), *id, s("succeeded")))
        .collect();
    for job in [a_id, b_id, slow_id] {
        let runs = c.wait_for_finished(job, 3, WAIT).await;
        assert_eq!(shape(&runs), want, "job {job}");
        for r in &runs {
            let event = stored.iter().find(|e| e.id == r.source_id).unwrap();
            let delay = if job == slow_id { 2000 } else { 0 };
            assert_eq!(
                r.scheduled_at.timestamp_millis() - event.created_at.timestamp_millis(),
                delay,
                "job {job}: due at the event plus its delay"
            );
        }
    }
    // Each ran once per event, with the event in its environment and on stdin.
    let mut want: Vec<String> = [("order 1", 0), ("order 2", 1), ("", 2)]
        .iter()
        .map(|(payload, i)| format!("{}|order.paid|{payload}|{payload}", ids[*i]))
        .collect();
    want.sort();
    for file in [&a, &b, &slow] {
        let mut got = lines(file);
        got.sort();
        assert_eq!(got, want, "{}", file.display());
    }
    wait_until("no event request left", WAIT, || async {
        (requests(&c).await == 0).then_some(())
    })
    .await;
    assert!(c.runs(other).await.is_empty());
    assert!(c.runs(off).await.is_empty());
    c.shutdown().await;
}

/// A second monitor (or one restarted) that reads an event again after its job's `delay_secs`
/// changed puts the event's request again, due at another time: the run it asks for is the
/// one that already ran, so it runs nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_request_put_again_due_at_another_time_runs_nothing_more() {
    use gocron_shared::control::{self, EventRequest};
    use gocron_shared::job::EventRef;
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let out = c.path("out.txt");
    let job = c
        .insert_job("a", "@event order.paid", &recorder(&out))
        .await;
    c.wait_published(job).await;
    assert_eq!(insert_event(&c, "order.paid", "order 1", None).await, 1);
    let first = c.wait_for_finished(job, 1, WAIT).await;
    assert_eq!(
        shape(&first),
        [(s("event"), first[0].source_id, s("succeeded"))]
    );
    wait_until("the event's request served", WAIT, || async {
        (requests(&c).await == 0).then_some(())
    })
    .await;
    // Put again as the other monitor computes it: the same event, due a second from now.
    let event = &events(&c).await[0];
    let request = EventRequest {
        due_ms: chrono::Utc::now().timestamp_millis() + 1000,
        event: EventRef {
            id: event.id,
            name: event.name.clone(),
            payload: "order 1".into(),
            delayed: true,
            requested_ms: chrono::Utc::now().timestamp_millis(),
        },
    };
    let key = c.etcd_keys().event_request_key(job, event.id);
    control::put_request(&mut c.etcd().await, key, &request)
        .await
        .expect("put the request again");
    assert_eq!(requests(&c).await, 1);
    // A dispatcher takes a request out once it is served (here: found served already).
    wait_until("the request put again dropped", WAIT, || async {
        (requests(&c).await == 0).then_some(())
    })
    .await;
    let runs = c.runs(job).await;
    assert_eq!(runs.len(), 1, "one run of the event: {runs:?}");
    assert_eq!(lines(&out).len(), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_a_dispatcher_and_late_delayed_ones_take_the_misfire_policy() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("DISPATCHER", "MAX_LATE_MS", "500");
    c.set("ALARM", "CHECK_MS", "200");
    c.start_executor("exec-a").await;
    c.start_monitor();
    let (now_file, once_file) = (c.path("now.txt"), c.path("once.txt"));
    // Fails its first attempt: the retry runs for the same event.
    let flaky_file = c.path("flaky.txt");
    let flaky = c
        .insert_job_with(
            "flaky",
            "@event batch",
            &format!("{} ; [ \"$GOCRON_ATTEMPT\" = 2 ]", recorder(&flaky_file)),
            &[("retries", 1.into()), ("retry_delay_secs", 0.into())],
        )
        .await;
    let at_once = c
        .insert_job("at-once", "@event batch", &recorder(&now_file))
        .await;
    let late_skip = c
        .insert_job_with(
            "late-skip",
            "@event batch",
            "true",
            &[("delay_secs", 1.into())],
        )
        .await;
    let late_once = c
        .insert_job_with(
            "late-once",
            "@event batch",
            &recorder(&once_file),
            &[("delay_secs", 1.into()), ("misfire", "once".into())],
        )
        .await;
    for id in [at_once, late_skip, late_once, flaky] {
        c.wait_published(id).await;
    }
    // No dispatcher runs: the event's requests wait in etcd, and nothing runs.
    assert_eq!(insert_event(&c, "batch", "b1", None).await, 1);
    // One too large to hand to a command: recorded, not lost.
    let big = "x".repeat(gocron_shared::job::MAX_EVENT_PAYLOAD_BYTES + 1);
    assert_eq!(insert_event(&c, "batch", &big, None).await, 1);
    wait_until("four requests", WAIT, || async {
        (requests(&c).await == 4).then_some(())
    })
    .await;
    let stored = events(&c).await;
    let (first, second) = (stored[0].id, stored[1].id);
    for job in [at_once, late_skip, late_once, flaky] {
        let runs = c.wait_for_finished(job, 1, WAIT).await;
        assert_eq!(shape(&runs), [(s("event"), second, s("skipped"))]);
        assert!(
            runs[0]
                .error
                .as_deref()
                .unwrap_or("")
                .contains("at most 65536"),
            "{:?}",
            runs[0].error
        );
    }
    // Back once the delayed ones are past due + max_late.
    let due = stored[0].created_at + chrono::Duration::milliseconds(1000 + 500);
    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    c.start_dispatcher("disp-0");
    let want = |status: &str| {
        vec![
            (s("event"), first, s(status)),
            (s("event"), second, s("skipped")),
        ]
    };
    assert_eq!(
        shape(&c.wait_for_finished(at_once, 2, WAIT).await),
        want("succeeded")
    );
    assert_eq!(
        shape(&c.wait_for_finished(late_once, 2, WAIT).await),
        want("succeeded")
    );
    let skipped = c.wait_for_finished(late_skip, 2, WAIT).await;
    assert_eq!(shape(&skipped), want("missed"));
    wait_until("no event request left", WAIT, || async {
        (requests(&c).await == 0).then_some(())
    })
    .await;
    let runs = c.wait_for_finished(flaky, 3, WAIT).await;
    let failed = runs
        .iter()
        .find(|r| r.trigger == "event" && r.source_id == first)
        .unwrap();
    assert_eq!(failed.status, "failed");
    let retry = runs.iter().find(|r| r.trigger == "retry").unwrap();
    assert_eq!(
        (
            retry.status.as_str(),
            retry.attempt,
            retry.retry_of,
            retry.source_id
        ),
        ("succeeded", 2, Some(failed.id), failed.id)
    );
    assert_eq!(lines(&flaky_file), vec![format!("{first}|batch|b1|b1"); 2]);
    assert_eq!(lines(&now_file), [format!("{first}|batch|b1|b1")]);
    assert_eq!(lines(&once_file), [format!("{first}|batch|b1|b1")]);
    c.shutdown().await;
}
