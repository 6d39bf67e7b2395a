//! Nothing stuck, nothing silent, nothing leaked: output of any bytes is recorded as text, a
//! job's environment is its own, an executor's port takes bounded connections and frames, and
//! an HTTP job ends at its deadline.

use std::time::Duration;

use chrono::Utc;
use gocron_shared::job::{RunStatus, Trigger};
use gocron_shared::rpc::{self, KillRequest, Refused};
use gocron_shared::runs::{Outcome, RunLog};
use gocron_tests::{Backend, Cluster, wait_until};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What the bytes `a NUL b 0xFF c ESC[31m red` become in `cron_run.output`.
const SHOWN: &str = "a\u{2400}b\u{FFFD}c\u{241B}[31mred\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_with_nul_invalid_utf8_and_escapes_is_recorded_on_every_backend() {
    for backend in [Backend::Sqlite, Backend::MariaDb, Backend::Postgres] {
        let mut c = Cluster::new(backend, &[]).await;
        c.start_executor("exec-a").await;
        c.start_dispatcher("disp-0");
        c.start_monitor();
        let bytes = r"printf 'a\000b\377c\033[31mred\n'";
        let ok = c.insert_job("ok", "* * * * * *", bytes).await;
        let fails = c
            .insert_job("fails", "* * * * * *", &format!("{bytes}; exit 3"))
            .await;
        for (job, status, code) in [(ok, "succeeded", 0), (fails, "failed", 3)] {
            let runs = c.wait_for_finished(job, 1, Duration::from_secs(30)).await;
            let r = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
            assert_eq!(
                (r.status.as_str(), r.exit_code, r.output.as_deref()),
                (status, Some(code), Some(SHOWN)),
                "{backend:?}: {r:#?}"
            );
        }
        c.shutdown().await;
    }
}

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
    let refused = log
        .finish(id, "a@1", (Utc::now(), Utc::now()), outcome("a\0b"))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // The row is still in flight: a good outcome is then recorded, and only once.
    assert!(
        log.finish(id, "a@1", (Utc::now(), Utc::now()), outcome("ab"))
            .await
            .unwrap()
    );
    assert!(
        !log.finish(id, "a@1", (Utc::now(), Utc::now()), outcome("ab"))
            .await
            .unwrap()
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabytes_of_output_leave_a_bounded_tail_of_whole_characters() {
    for backend in [Backend::Sqlite, Backend::MariaDb, Backend::Postgres] {
        let mut c = Cluster::new(backend, &[]).await;
        c.start_executor("exec-a").await;
        c.start_dispatcher("disp-0");
        c.start_monitor();
        // 14,285,714 lines of "€€\n" (7 bytes), then "END\n": 100,000,002 bytes of valid UTF-8,
        // whose last 64 KiB begin inside a "€".
        // One run (run now; once a year otherwise): an every-second rule's next tick would be
        // `skipped` while this one runs, and could be the first row to end.
        let job = c
            .insert_job(
                "flood",
                "0 0 1 1 *",
                "yes '€€' | head -n 14285714; echo END",
            )
            .await;
        c.run_now(job, "").await;
        let runs = c.wait_for_finished(job, 1, Duration::from_secs(60)).await;
        let r = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
        assert_eq!(r.status, "succeeded", "{backend:?}: {:?}", r.error);
        let output = r.output.as_deref().unwrap();
        let note = "[... 99934467 earlier bytes dropped ...]\n";
        assert!(
            output.starts_with(note),
            "{backend:?}: {:?}",
            &output[..output.len().min(80)]
        );
        let kept = &output[note.len()..];
        assert!(
            kept.len() <= 64 * 1024,
            "{backend:?}: {} bytes kept",
            kept.len()
        );
        assert!(kept.ends_with("€€\nEND\n"), "{backend:?}");
        assert!(
            !kept.contains('\u{FFFD}'),
            "{backend:?}: a character was cut"
        );
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sees_none_of_the_executors_settings_only_what_pass_env_names() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    let db_url = c.database().url;
    // The same secret as the cluster's conf.ini, so that dispatchers still get through.
    let secret = format!("test-secret-{}-0123456789", c.id);
    let executor = c
        .start_executor_process_with(
            "exec-a",
            crate::EXECUTOR_PROCESS.as_ref(),
            &[
                ("GOCRON__RPC__SECRET", &secret),
                ("GOCRON__DATABASE__URL", &db_url),
                ("GOCRON__EXECUTOR__PASS_ENV", "PASSED_TO_JOBS"),
                ("PASSED_TO_JOBS", "passed"),
                ("KEPT_FROM_JOBS", "kept"),
            ],
        )
        .await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c.insert_job("env", "* * * * * *", "env | sort").await;
    let runs = c.wait_for_finished(job, 1, Duration::from_secs(30)).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(executor.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let r = runs.iter().find(|r| r.finished_at.is_some()).unwrap();
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let output = r.output.as_deref().unwrap();
    let lines: Vec<&str> = output.lines().collect();
    for leak in [
        "GOCRON__",
        "KEPT_FROM_JOBS",
        secret.as_str(),
        db_url.as_str(),
    ] {
        assert!(
            !output.contains(leak),
            "{leak:?} reached the job:\n{output}"
        );
    }
    for expected in [
        "PASSED_TO_JOBS=passed",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "SHELL=/bin/sh",
        &format!("GOCRON_RUN_ID={}", r.id),
    ] {
        assert!(lines.contains(&expected), "no {expected:?} in:\n{output}");
    }
    for name in ["HOME=", "USER=", "LOGNAME=", "LANG="] {
        assert!(
            lines.iter().any(|l| l.starts_with(name)),
            "no {name} in:\n{output}"
        );
    }
    let executor = std::sync::Mutex::new(executor);
    wait_until("the executor exited", Duration::from_secs(30), || {
        let exited = executor.lock().unwrap().try_wait().unwrap();
        async move { exited }
    })
    .await;
    c.shutdown().await;
}

/// Whether the executor closes `stream` within `within` (reads end or fail).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A legitimate call to the executor at `addr`: a kill of a run it does not have.
async fn legitimate_call(c: &Cluster, addr: std::net::SocketAddr) -> Option<()> {
    let client = rpc::connect(addr, Duration::from_secs(2), &rpc::Tls::default())
        .await
        .ok()?;
    let request = KillRequest {
        secret: c.base_config().rpc.secret,
        run_id: 42,
        by: "test".into(),
    };
    let answer = client
        .kill_run(rpc::context(Duration::from_secs(2)), request)
        .await
        .ok()?;
    (answer == Err(Refused::NotRunning(42))).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_refused_and_idle_ones_closed() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor_with("exec-a", &[("EXECUTOR", "MAX_CONNECTIONS", "4")])
        .await;
    let addr = c.executor_address("exec-a").await;
    let mut flood = Vec::new();
    for _ in 0..4 {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    // Connections are accepted in order: the four hold every slot, so each one more is closed
    // as it is accepted.
    let mut refused = 0;
    for _ in 0..20 {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        if closed_within(&mut extra, Duration::from_millis(500)).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 20, "connections over the limit were kept");
    // Connections that never send a request are closed at the first-frame deadline (10 s)...
    for stream in &mut flood {
        assert!(
            closed_within(stream, Duration::from_secs(20)).await,
            "an idle connection was kept past the first-frame deadline"
        );
    }
    drop(flood);
    // ...and then a dispatcher gets through.
    wait_until("a legitimate call", Duration::from_secs(10), || {
        legitimate_call(&c, addr)
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_at_its_length_and_the_executor_goes_on() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    let addr = c.executor_address("exec-a").await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A length prefix one byte over the limit (and under tokio's default of 8 MiB), then part
    // of it: refused on the prefix, not after buffering the frame, and well before the
    // first-frame deadline.
    let over = gocron_shared::rpc::MAX_FRAME_BYTES as u32 + 1;
    let _ = stream.write_all(&over.to_be_bytes()).await;
    let _ = stream.write_all(&[0u8; 16 * 1024]).await;
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "an oversized frame was accepted"
    );
    wait_until("a legitimate call", Duration::from_secs(10), || {
        legitimate_call(&c, addr)
    })
    .await;
    c.shutdown().await;
}

/// A server that accepts connections and never answers; returns its address.
async fn silent_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_job_without_timeout_secs_ends_at_its_next_tick() {
    let server = silent_server().await;
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    c.start_monitor();
    let job = c
        .insert_job_with(
            "hangs",
            "*/3 * * * * *",
            &format!("http://{server}/never"),
            &[("kind", "http".into())],
        )
        .await;
    let r = wait_until("the hanging request ended", Duration::from_secs(30), || {
        let c = &c;
        async move {
            c.runs(job)
                .await
                .into_iter()
                .find(|r| r.status == "timeout")
        }
    })
    .await;
    assert_eq!(
        r.error.as_deref(),
        Some("timed out after 3000 ms: the HTTP request was aborted"),
        "{r:#?}"
    );
    let took = r.finished_at.unwrap() - r.scheduled_at;
    assert!(
        took >= chrono::Duration::milliseconds(2900) && took < chrono::Duration::seconds(6),
        "ended {took} after its tick"
    );
    c.shutdown().await;
}
