//! Only dispatchers may call executors: the `[rpc] secret` is checked before anything is done.

use std::time::Duration;

use chrono::Utc;
use gocron_shared::job::{JobKind, JobSpec, TimeoutPolicy, Trigger};
use gocron_shared::rpc::{self, OutputRequest, Refused, RunRequest, Secret, WireRequest};
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
            // `$MARK` is the job's own variable: only the JSON shape of a request carries it.
            command: format!("echo \"${{MARK:-no env}}\" >> {}", marker.display()),
            kind: JobKind::Shell,
            machine: String::new(),
            timeout_secs: 0,
            timeout_policy: TimeoutPolicy::Abandon,
            time_zone: String::new(),
            misfire: Default::default(),
            env: vec![("MARK".into(), "ran".into())],
            workdir: String::new(),
            route: Default::default(),
        },
        scheduled_ms: tick.timestamp_millis(),
        timeout_ms: 0,
        trigger: Trigger::Manual,
        dispatcher: "intruder".into(),
        attempt: 1,
        event: None,
        parent_run: None,
        shard: None,
        start_at_ms: None,
    };
    let client = rpc::connect(addr, Duration::from_secs(5), &rpc::Tls::default())
        .await
        .unwrap();
    let ctx = || rpc::context(Duration::from_secs(5));

    let send = |request: RunRequest| {
        let client = client.clone();
        async move {
            match request.to_wire() {
                WireRequest::V1(r) => client.start_run(ctx(), r).await.unwrap(),
                WireRequest::Json(r) => client.start_run_json(ctx(), r).await.unwrap(),
            }
        }
    };
    // Both shapes of a request: the first (no env) and JSON.
    let first_shape = |secret: &str| {
        let mut r = request(secret);
        r.job.env.clear();
        r
    };
    assert!(matches!(first_shape("").to_wire(), WireRequest::V1(_)));
    assert!(matches!(request("").to_wire(), WireRequest::Json(_)));
    for wrong in ["", "not-the-secret-at-all-0123456789"] {
        assert_eq!(
            send(request(wrong)).await.unwrap_err(),
            Refused::Unauthorized
        );
        assert_eq!(
            send(first_shape(wrong)).await.unwrap_err(),
            Refused::Unauthorized
        );
    }
    // A request that does not decode is an error value, and the connection still serves.
    let answer = client
        .start_run_json(ctx(), "{\"run_id\": 1".into())
        .await
        .unwrap();
    assert!(matches!(answer, Err(Refused::Malformed(_))), "{answer:?}");
    // A run's output is read with the secret only (checked before the run is looked for).
    let right = c.base_config().rpc.secret;
    let output = |secret: Secret| OutputRequest {
        secret,
        run_id,
        offset: 0,
        wait_ms: 0,
    };
    for wrong in ["", "not-the-secret-at-all-0123456789"] {
        let answer = client.run_output(ctx(), output(Secret::new(wrong))).await;
        assert_eq!(answer.unwrap().unwrap_err(), Refused::Unauthorized);
    }
    let answer = client.run_output(ctx(), output(right.clone())).await;
    assert_eq!(answer.unwrap().unwrap_err(), Refused::NotRunning(run_id));
    // The right secret, same request: it runs. So the refusals above were the secret's doing,
    // and they left the run untouched (still claimable, still `dispatched`).
    let answer = send(RunRequest {
        secret: right,
        ..request("")
    })
    .await;
    assert!(answer.is_ok(), "{answer:?}");
    wait_until("the authorized run", Duration::from_secs(10), || async {
        (lines(&marker) == ["ran"]).then_some(())
    })
    .await;
    c.shutdown().await;
}

/// A run handed over before its tick is the executor's from then (claimed, killable) and
/// starts at its tick, not when it arrives; one killed before its tick never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_handed_over_early_starts_at_its_tick_and_one_killed_before_never_starts() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    let addr = c.executor_address("exec-a").await;
    let secret = c.base_config().rpc.secret;
    let runs = RunLog::spawn(c.db.clone());
    let client = rpc::connect(addr, Duration::from_secs(5), &rpc::Tls::default())
        .await
        .unwrap();
    let ctx = || rpc::context(Duration::from_secs(5));
    let job = |id: i64, marker: &std::path::Path| JobSpec {
        id,
        name: format!("early-{id}"),
        rule: "@daily".into(),
        // The executor's shell is `/bin/sh`: `date`, not bash's `$EPOCHREALTIME`.
        command: format!("date +%s.%N >> {}", marker.display()),
        kind: JobKind::Shell,
        machine: String::new(),
        timeout_secs: 0,
        timeout_policy: TimeoutPolicy::Sync,
        time_zone: String::new(),
        misfire: Default::default(),
        env: Vec::new(),
        workdir: String::new(),
        route: Default::default(),
    };
    let hand_over = |id: i64, marker: std::path::PathBuf, lead: Duration| {
        let (client, runs, secret) = (client.clone(), runs.clone(), secret.clone());
        async move {
            let tick = Utc::now() + lead;
            let tick = chrono::DateTime::from_timestamp_millis(tick.timestamp_millis()).unwrap();
            let run_id = runs
                .insert(id, tick, Trigger::Schedule)
                .await
                .unwrap()
                .unwrap();
            let request = RunRequest {
                secret,
                run_id,
                job: job(id, &marker),
                scheduled_ms: tick.timestamp_millis(),
                timeout_ms: 0,
                trigger: Trigger::Schedule,
                dispatcher: "test".into(),
                attempt: 1,
                event: None,
                parent_run: None,
                shard: None,
                start_at_ms: Some(tick.timestamp_millis()),
            };
            let WireRequest::Json(json) = request.to_wire() else {
                panic!("a request with start_at_ms must go as JSON");
            };
            let answer = client.start_run_json(ctx(), json).await.unwrap();
            assert!(answer.is_ok(), "{answer:?}");
            (run_id, tick)
        }
    };
    let final_row = |run_id: i64| {
        let db = c.db.clone();
        async move {
            use sea_orm::EntityTrait as _;
            wait_until(
                &format!("run {run_id} final"),
                Duration::from_secs(30),
                || async {
                    gocron_shared::entity::run::Entity::find_by_id(run_id)
                        .one(&db)
                        .await
                        .unwrap()
                        .filter(|r| r.finished_at.is_some())
                },
            )
            .await
        }
    };

    // Accepted at once, started at the tick: the command's own clock is not before it.
    let ran = c.path("early.txt");
    let (run_id, tick) = hand_over(1, ran.clone(), Duration::from_secs(2)).await;
    assert!(
        Utc::now() < tick,
        "the hand-over took the whole lead: no test"
    );
    let row = final_row(run_id).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    let started: f64 = lines(&ran)[0].parse().unwrap();
    let tick_secs = tick.timestamp_millis() as f64 / 1000.0;
    assert!(
        started >= tick_secs,
        "started at {started}, before its tick {tick_secs}"
    );

    // Killed while it waits for its tick: killed, and its command never runs.
    let never = c.path("never.txt");
    let (run_id, _) = hand_over(2, never.clone(), Duration::from_secs(600)).await;
    let kill = gocron_shared::rpc::KillRequest {
        secret: secret.clone(),
        run_id,
        by: "test".into(),
    };
    let answer = client.kill_run(ctx(), kill).await.unwrap();
    assert_eq!(answer, Ok(()));
    let row = final_row(run_id).await;
    assert_eq!(row.status, "killed", "{row:?}");
    assert!(
        row.error
            .as_deref()
            .unwrap_or("")
            .contains("before its tick"),
        "{row:?}"
    );
    assert!(!never.exists(), "a run killed before its tick ran");
    c.shutdown().await;
}

/// A CA, and an executor certificate it signed for 127.0.0.1, written as PEM files under
/// `dir`: (ca, cert, key) paths.
fn certificates(dir: &std::path::Path, tag: &str) -> [std::path::PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths = [
        dir.join(format!("{tag}-ca.pem")),
        dir.join(format!("{tag}-cert.pem")),
        dir.join(format!("{tag}-key.pem")),
    ];
    std::fs::write(&paths[0], ca.pem()).unwrap();
    std::fs::write(&paths[1], cert.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_runs_go_over_tls_and_plain_or_untrusted_callers_get_nothing() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    let [ca, cert, key] = certificates(c.dir.path(), "good");
    let [other_ca, ..] = certificates(c.dir.path(), "other");
    c.set("RPC", "TLS_CERT", cert.to_str().unwrap());
    c.set("RPC", "TLS_KEY", key.to_str().unwrap());
    c.set("RPC", "TLS_CA", ca.to_str().unwrap());
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c.insert_job("tick", "* * * * * *", "echo over-tls").await;
    let runs = c.wait_for_finished(job, 2, Duration::from_secs(30)).await;
    for r in runs.iter().filter(|r| r.finished_at.is_some()) {
        assert_eq!(r.status, "succeeded", "{r:#?}");
        assert_eq!(r.output.as_deref(), Some("over-tls\n"));
    }

    // A caller without TLS, or trusting another CA, never gets a call through.
    let addr = c.executor_address("exec-a").await;
    let secret = c.base_config().rpc.secret;
    let mut untrusted = c.base_config().rpc;
    untrusted.tls_ca = Some(other_ca);
    for tls in [rpc::Tls::default(), rpc::Tls::load(&untrusted).unwrap()] {
        let outcome = async {
            let client = rpc::connect(addr, Duration::from_secs(5), &tls).await?;
            let request = gocron_shared::rpc::KillRequest {
                secret: secret.clone(),
                run_id: 1,
                by: "test".into(),
            };
            client
                .kill_run(rpc::context(Duration::from_secs(5)), request)
                .await
                .map_err(std::io::Error::other)
        }
        .await;
        assert!(outcome.is_err(), "{outcome:?}");
    }
    // The same call with the right CA gets an answer.
    let tls = rpc::Tls::load(&c.base_config().rpc).unwrap();
    let client = rpc::connect(addr, Duration::from_secs(5), &tls)
        .await
        .unwrap();
    let answer = client
        .kill_run(
            rpc::context(Duration::from_secs(5)),
            gocron_shared::rpc::KillRequest {
                secret,
                run_id: 1,
                by: "test".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(answer, Err(Refused::NotRunning(1)));
    c.shutdown().await;
}

/// Several runs in one call: each answered as if it had come alone, in the batch's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_runs_is_answered_run_by_run() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    let addr = c.executor_address("exec-a").await;
    let right = c.base_config().rpc.secret;
    let runs = RunLog::spawn(c.db.clone());
    let tick = Utc::now();
    let mut requests = Vec::new();
    for id in 1..=4i64 {
        let run_id = runs
            .insert(id, tick, Trigger::Manual)
            .await
            .unwrap()
            .unwrap();
        let marker = c.path(&format!("ran-{id}.txt"));
        requests.push(RunRequest {
            secret: right.clone(),
            run_id,
            job: JobSpec {
                id,
                name: format!("batch-{id}"),
                rule: "@daily".into(),
                command: format!("echo {id} >> {}", marker.display()),
                kind: JobKind::Shell,
                machine: String::new(),
                timeout_secs: 0,
                timeout_policy: TimeoutPolicy::Sync,
                time_zone: String::new(),
                misfire: Default::default(),
                env: Vec::new(),
                workdir: String::new(),
                route: Default::default(),
            },
            scheduled_ms: tick.timestamp_millis(),
            timeout_ms: 0,
            trigger: Trigger::Manual,
            dispatcher: "test".into(),
            attempt: 1,
            event: None,
            parent_run: None,
            shard: None,
            start_at_ms: None,
        });
    }
    // The second comes with a wrong secret; the third is held by another executor already.
    requests[1].secret = Secret::new("not-the-secret-at-all-0123456789");
    let fences = c.fences().await;
    let other = gocron_shared::live::Holder::Executor {
        instance: "i-z".into(),
        label: "exec-z@9".into(),
        ended: false,
    };
    assert_eq!(
        fences
            .claim_run(3, requests[2].run_id, "exec-z@9", Some(&other))
            .await
            .unwrap(),
        None
    );
    let client = rpc::connect(addr, Duration::from_secs(5), &rpc::Tls::default())
        .await
        .unwrap();
    let ctx = || rpc::context(Duration::from_secs(5));
    let batch = format!(
        "[{}]",
        requests
            .iter()
            .map(RunRequest::to_json)
            .collect::<Vec<_>>()
            .join(",")
    );
    let answers = client.start_runs_json(ctx(), batch).await.unwrap().unwrap();
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert!(
        answers[0]
            .as_ref()
            .is_ok_and(|a| a.executor.starts_with("exec-a@")),
        "{answers:?}"
    );
    assert_eq!(answers[1].as_ref().unwrap_err(), &Refused::Unauthorized);
    assert!(
        matches!(&answers[2], Err(Refused::AlreadyClaimed(why)) if why.contains("exec-z@9")),
        "{answers:?}"
    );
    assert!(answers[3].is_ok(), "{answers:?}");
    // The two accepted ran; the refused ones did not.
    for id in [1, 4] {
        let marker = c.path(&format!("ran-{id}.txt"));
        wait_until(
            &format!("run of job {id}"),
            Duration::from_secs(10),
            || async { (lines(&marker) == [id.to_string()]).then_some(()) },
        )
        .await;
    }
    let finished = |run_id: i64| {
        let db = c.db.clone();
        async move {
            use sea_orm::EntityTrait as _;
            wait_until("the run's outcome", Duration::from_secs(10), || async {
                gocron_shared::entity::run::Entity::find_by_id(run_id)
                    .one(&db)
                    .await
                    .unwrap()
                    .filter(|r| r.finished_at.is_some())
            })
            .await
        }
    };
    for at in [0, 3] {
        assert_eq!(finished(requests[at].run_id).await.status, "succeeded");
    }
    for id in [2, 3] {
        assert!(!c.path(&format!("ran-{id}.txt")).exists(), "job {id} ran");
    }
    // A batch that does not decode is refused whole, and the connection still serves.
    let answer = client
        .start_runs_json(ctx(), "[{\"run_id\": 1".into())
        .await
        .unwrap();
    assert!(matches!(answer, Err(Refused::Malformed(_))), "{answer:?}");
    c.shutdown().await;
}
