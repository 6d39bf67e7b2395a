//! The web console: in a real browser (Debian's chromium, over WebDriver) an operator signs in,
//! creates a job, sees it run, reads its output (hostile output stays text), runs a job now,
//! follows and kills a long run, disables a job, and opens every page (screenshots under
//! `var/screenshots/console/`); over plain HTTP, the safeguards: cookie flags, CSRF, origin,
//! headers, roles, the pause after a failed sign-in.

use std::time::{Duration, Instant};

use gocron_tests::browser::Browser;
use gocron_tests::{Backend, Cluster, wait_until};

const ADMIN: &str = "admin-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

/// A job name and an output that would run script or draw markup if they were not escaped.
const HOSTILE_NAME: &str = "<img src=x onerror=\"window.pwnedName=1\">nightly";
const HOSTILE_COMMAND: &str =
    r"printf '<script>window.pwned=1</script>\033[31mred\000nul<b>bold</b>\n'";

async fn start(c: &mut Cluster) -> String {
    c.set("HTTP", "ADMIN_TOKEN", ADMIN);
    c.set("HTTP", "VIEWER_TOKEN", VIEWER);
    let address = c.start_monitor_http("monitor").await;
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_through_the_console_in_a_real_browser() {
    let mut c = Cluster::new(Backend::Sqlite, &[("local", "127.0.0.1")]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    let base = start(&mut c).await;
    let b = Browser::start().await;

    // Every page sends a stranger to sign in, and back where they were going after.
    b.goto(&format!("{base}/jobs")).await;
    b.wait_for_path("the sign-in page", |p| p.starts_with("/login"))
        .await;
    b.screenshot("01-sign-in").await;
    b.fill("#token", "not-the-token-0123456789").await;
    b.click("button[type=submit]").await;
    assert!(b.text("p.error-text").await.contains("not valid"));
    // Right after a wrong token, this address is paused a second: the page says so, and the
    // next try after it gets in.
    wait_until("signed in", Duration::from_secs(20), || async {
        b.fill("#token", ADMIN).await;
        b.submit("button[type=submit]").await;
        (b.path().await == "/jobs").then_some(())
    })
    .await;

    // A new job: the rule's next fire times (or its error) show as it is typed.
    b.click("a.button[href='/jobs/new']").await;
    b.fill("#name", HOSTILE_NAME).await;
    b.fill("#rule", "61 * * * *").await;
    wait_until(
        "the rule's error under the field",
        Duration::from_secs(20),
        || async {
            let text = b.text("#next-fires").await;
            text.contains("61").then_some(())
        },
    )
    .await;
    b.fill("#rule", "*/2 * * * * *").await;
    wait_until("five next fire times", Duration::from_secs(20), || async {
        let n = b
            .script("return document.querySelectorAll('#next-fires li').length")
            .await;
        (n == 5).then_some(())
    })
    .await;
    b.fill("#command", HOSTILE_COMMAND).await;
    b.screenshot("02-new-job").await;
    // The lower half of the form: retries, the event delay, chains, the route.
    b.fill("#retries", "1").await;
    b.script("const r = document.querySelector('#route'); r.value = 'hash'; r.scrollIntoView(); return 0")
        .await;
    b.screenshot("02b-new-job-more").await;
    b.click("#save").await;
    let path = b
        .wait_for_path("the new job's page", |p| {
            p.strip_prefix("/jobs/")
                .is_some_and(|id| id.parse::<i64>().is_ok())
        })
        .await;
    let id: i64 = path["/jobs/".len()..].parse().unwrap();
    let row = c.job_by_name(HOSTILE_NAME).await;
    assert_eq!((row.id, row.rule.as_str()), (id, "*/2 * * * * *"));
    assert_eq!(row.command, HOSTILE_COMMAND);
    assert_eq!((row.retries, row.route.as_str()), (1, "hash"));

    // It runs; its output is shown as text, script and markup included.
    let run = wait_until("a run of the new job", Duration::from_secs(30), || async {
        c.runs(id)
            .await
            .into_iter()
            .find(|r| r.status == "succeeded")
    })
    .await;
    b.goto(&format!("{base}/jobs/{id}/runs/{}", run.id)).await;
    let output = b.text("#output").await;
    assert!(
        output.contains("<script>window.pwned=1</script>␛[31mred␀nul<b>bold</b>"),
        "{output:?}"
    );
    let page = b
        .script(
            "return [typeof window.pwned, typeof window.pwnedName, \
             document.querySelectorAll('#output *, img').length, document.title]",
        )
        .await;
    assert_eq!(page[0], "undefined", "{page}");
    assert_eq!(page[1], "undefined", "{page}");
    assert_eq!(page[2], 0, "{page}");
    assert!(page[3].as_str().unwrap().starts_with("Run "), "{page}");
    b.screenshot("04-run").await;

    // The run's page followed from another site (as from an alarm mail in a webmail, which the
    // SameSite=Strict cookie does not go along with) opens signed in.
    let link = format!(
        "data:text/html,<a id=mail href='{base}/jobs/{id}/runs/{}'>run</a>",
        run.id
    );
    b.goto(&link).await;
    b.click("#mail").await;
    b.wait_for_path("the run's page from a mail link", |p| {
        p == format!("/jobs/{id}/runs/{}", run.id)
    })
    .await;

    // The job's page: its last runs; saved unchanged, the row stays as it was; then disabled
    // with a click.
    b.goto(&format!("{base}/jobs/{id}")).await;
    assert!(b.text("h1").await.contains(HOSTILE_NAME));
    assert_eq!(
        b.script("return document.querySelectorAll('img').length")
            .await,
        0
    );
    b.screenshot("03-job").await;
    // The answer is the same page: waited for as a new page, not taken from the old one.
    b.submit("#save").await;
    b.wait_for_path("the job page after saving", |p| p == format!("/jobs/{id}"))
        .await;
    let saved = c.job_by_name(HOSTILE_NAME).await;
    assert_eq!(
        (saved.command.as_str(), saved.rule.as_str(), saved.enabled),
        (HOSTILE_COMMAND, "*/2 * * * * *", 1)
    );
    b.click(&format!("form[action='/jobs/{id}/disable'] button"))
        .await;
    b.find(".state-disabled").await;
    assert_eq!(c.job_by_name(HOSTILE_NAME).await.enabled, 0);

    // A long job, run now from its page: its output arrives while it runs, then it is killed.
    let barrier = c.path("long.go");
    let long = c
        .insert_job(
            "long",
            "0 0 1 1 *",
            &format!(
                "echo first line; while [ ! -e {} ]; do sleep 0.05; done; echo never",
                barrier.display()
            ),
        )
        .await;
    c.wait_published(long).await;
    b.goto(&format!("{base}/jobs/{long}")).await;
    b.click(&format!("form[action='/jobs/{long}/run'] button"))
        .await;
    let run_path = b
        .wait_for_path("the run-now run's page", |p| {
            p.starts_with(&format!("/jobs/{long}/runs/"))
        })
        .await;
    let run_id: i64 = run_path.rsplit('/').next().unwrap().parse().unwrap();
    wait_until(
        "the first line in the live tail",
        Duration::from_secs(30),
        || async { b.text("#output").await.contains("first line").then_some(()) },
    )
    .await;
    // Still going: the line came through the stream, not from a recorded row.
    assert!(!barrier.exists());
    let going = c.runs(long).await;
    assert!(
        matches!(going[0].status.as_str(), "dispatched" | "running"),
        "{going:?}"
    );
    assert_eq!(going[0].output.as_deref().unwrap_or(""), "");
    b.screenshot("05-run-live").await;
    b.click(&format!("form[action='/runs/{run_id}/kill'] button"))
        .await;
    b.client
        .accept_alert()
        .await
        .expect("the kill confirmation");
    wait_until("the run killed", Duration::from_secs(30), || async {
        let runs = c.runs(long).await;
        runs.iter()
            .find(|r| r.id == run_id && r.status == "killed")
            .map(|_| ())
    })
    .await;
    let manual = c.runs(long).await;
    assert_eq!(manual.len(), 1, "{manual:?}");
    assert_eq!(manual[0].trigger, "manual");

    // A row written by hand, multi-line and in upper case, saved through the form unchanged:
    // its command keeps its line ends and its policy stays what it was.
    let by_hand = c
        .insert_job_with(
            "by-hand",
            "0 0 1 1 *",
            "set -e\necho one\necho two",
            &[("timeout_policy", "KILL".into()), ("kind", "Shell".into())],
        )
        .await;
    b.goto(&format!("{base}/jobs/{by_hand}")).await;
    b.submit("#save").await;
    b.wait_for_path("the hand-written job saved", |p| {
        p == format!("/jobs/{by_hand}")
    })
    .await;
    let saved = c.job_by_name("by-hand").await;
    assert_eq!(saved.command, "set -e\necho one\necho two");
    assert_eq!(
        (
            saved.timeout_policy.to_lowercase(),
            saved.kind.to_lowercase()
        ),
        ("kill".to_owned(), "shell".to_owned())
    );

    // The other pages.
    b.goto(&format!("{base}/")).await;
    let executors = b.text("#executors").await;
    assert!(executors.contains("local"), "{executors}");
    assert!(b.text("#dispatchers").await.contains("disp-0"));
    b.find("#runs-chart rect.st-succeeded").await;
    let tiles = b
        .script(
            "return ['scheduled', 'disabled'].map(s => \
             document.querySelector(`a.tile[href='/jobs?state=${s}'] strong`).textContent)",
        )
        .await;
    // long and by-hand scheduled; the first job disabled.
    assert_eq!(tiles, serde_json::json!(["2", "1"]));
    b.screenshot("00-dashboard").await;

    // A run of a fanned-out tick (route shard, one executor here) names its place.
    let sharded = c
        .insert_job_with(
            "sharded",
            "0 0 1 1 *",
            "echo \"part $GOCRON_SHARD_INDEX of $GOCRON_SHARD_TOTAL\"",
            &[("route", "shard".into())],
        )
        .await;
    c.run_now(sharded, "").await;
    let part = c
        .wait_for_finished(sharded, 1, Duration::from_secs(60))
        .await[0]
        .id;
    b.goto(&format!("{base}/jobs/{sharded}/runs")).await;
    b.find("table.runs .st-succeeded").await;
    let table = b.text("table.runs").await;
    assert!(table.contains("manual 0/1"), "{table}");
    b.screenshot("07b-shard-runs").await;
    b.goto(&format!("{base}/jobs/{sharded}/runs/{part}")).await;
    let facts = b.text("dl.facts").await;
    assert!(facts.contains("0 of 1 (index from 0)"), "{facts}");
    assert_eq!(b.text("#output").await.trim(), "part 0 of 1");
    b.screenshot("04b-shard-run").await;
    b.goto(&format!("{base}/jobs")).await;
    let jobs = b.text("table.jobs").await;
    assert!(
        jobs.contains(HOSTILE_NAME) && jobs.contains("long"),
        "{jobs}"
    );
    assert_eq!(
        b.script("return document.querySelectorAll('img').length")
            .await,
        0
    );
    b.screenshot("06-jobs").await;
    b.goto(&format!("{base}/jobs/{id}/runs")).await;
    b.find("table.runs .st-succeeded").await;
    b.screenshot("07-runs").await;
    b.goto(&format!("{base}/executors")).await;
    assert!(b.text("table.executors").await.contains("exec-a"));
    b.screenshot("08-executors").await;
    b.goto(&format!("{base}/alarms")).await;
    b.find("table.alarms").await;
    b.screenshot("09-alarms").await;
    b.goto(&format!("{base}/audit")).await;
    let audit = b.text("table.audit").await;
    for action in ["job.create", "job.update", "job.run", "run.kill"] {
        assert!(audit.contains(action), "{action} in {audit}");
    }
    b.screenshot("10-audit").await;

    // Signed out, the pages are closed again.
    b.click("form.sign-out button").await;
    b.wait_for_path("the sign-in page after sign-out", |p| p == "/login")
        .await;
    b.goto(&format!("{base}/jobs/{id}")).await;
    b.wait_for_path("the sign-in page again", |p| p.starts_with("/login?next="))
        .await;
    b.close().await;
    c.shutdown().await;
}

/// A client that keeps redirects for the test to see.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`: the session cookie's `name=value` and the whole `Set-Cookie`.
async fn sign_in(base: &str, token: &str) -> (String, String) {
    let response = http()
        .post(format!("{base}/login"))
        .form(&[("token", token), ("next", "/jobs")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/jobs");
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    (set.split(';').next().unwrap().to_owned(), set)
}

/// The value of the hidden `csrf` field on the page at `path`.
async fn csrf_of(base: &str, cookie: &str, path: &str) -> String {
    let page = http()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_keeps_sessions_roles_and_forms_safe() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    let base = start(&mut c).await;
    let job = c.insert_job("kept", "@daily", "true").await;
    let client = http();

    // Security headers on pages and API alike.
    for path in ["/login", "/api/v1/openapi.json"] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        let h = response.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
    }

    // A failed sign-in is refused, after the pause.
    let started = Instant::now();
    let response = client
        .post(format!("{base}/login"))
        .form(&[("token", "wrong-token-0123456789")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("set-cookie").is_none());
    assert!(started.elapsed() >= gocron_web::console::GUESS_PAUSE);
    // The address is paused a second after that answer: even the right token is refused then,
    // here and on the API (a slower machine may let the second pass; then the pause was over).
    let answered = Instant::now();
    for attempt in [
        client
            .post(format!("{base}/login"))
            .form(&[("token", ADMIN)]),
        client
            .get(format!("{base}/api/v1/jobs"))
            .header("authorization", format!("Bearer {ADMIN}")),
    ] {
        let status = attempt.send().await.unwrap().status().as_u16();
        assert!(
            status == 429 || answered.elapsed() >= gocron_web::console::GUESS_PAUSE,
            "{status} {:?} after the failure",
            answered.elapsed()
        );
    }
    let admin_reads = || async {
        let response = client
            .get(format!("{base}/api/v1/jobs"))
            .header("authorization", format!("Bearer {ADMIN}"))
            .send()
            .await
            .unwrap();
        (response.status() == 200).then_some(())
    };
    wait_until("the pause over", Duration::from_secs(10), admin_reads).await;
    // A wrong bearer token pauses the address as a wrong sign-in does.
    let failed = Instant::now();
    let wrong = client
        .get(format!("{base}/api/v1/jobs"))
        .header("authorization", "Bearer wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let status = client
        .get(format!("{base}/api/v1/jobs"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(
        status == 429 || failed.elapsed() >= gocron_web::console::GUESS_PAUSE,
        "{status} {:?} after the wrong bearer token",
        failed.elapsed()
    );
    wait_until("the pause over again", Duration::from_secs(10), admin_reads).await;

    let (admin, set_cookie) = sign_in(&base, ADMIN).await;
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(flag), "{flag} in {set_cookie}");
    }
    let csrf = csrf_of(&base, &admin, &format!("/jobs/{job}")).await;
    // A one-button form posted to `path` with a session's cookie and a CSRF token.
    let post_to = |path: &str, cookie: &str, csrf: &str, origin: Option<&str>| {
        let mut request = client
            .post(format!("{base}{path}"))
            .header("cookie", cookie)
            .form(&[("csrf", csrf)]);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let disable = format!("/jobs/{job}/disable");
    let post =
        |cookie: &str, csrf: &str, origin: Option<&str>| post_to(&disable, cookie, csrf, origin);
    // No token, a wrong token, another site's form: refused, the job untouched.
    for (token, origin) in [
        ("", None),
        ("0".repeat(64).as_str(), None),
        (csrf.as_str(), Some("http://evil.example")),
    ] {
        let response = post(&admin, token, origin).await.unwrap();
        assert_eq!(response.status(), 403, "csrf {token:?} origin {origin:?}");
    }
    assert_eq!(c.job_by_name("kept").await.enabled, 1);

    // The API takes the session too, reads freely, changes only with the CSRF header.
    let api = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{base}/api/v1{path}"))
            .header("cookie", &admin)
    };
    assert_eq!(
        api(reqwest::Method::GET, "/jobs")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let patch = |with_csrf: bool| {
        let mut request = api(reqwest::Method::PATCH, &format!("/jobs/{job}"))
            .header("content-type", "application/json")
            .body(r#"{"enabled": false}"#);
        if with_csrf {
            request = request.header("x-csrf-token", &csrf);
        }
        request.send()
    };
    assert_eq!(patch(false).await.unwrap().status(), 403);
    assert_eq!(c.job_by_name("kept").await.enabled, 1);

    // A viewer sees the job but no buttons, and may not post.
    let (viewer, _) = sign_in(&base, VIEWER).await;
    let page = client
        .get(format!("{base}/jobs/{job}"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("kept") && !page.contains("/disable"),
        "{page}"
    );
    let viewer_csrf = csrf_of(&base, &viewer, &format!("/jobs/{job}")).await;
    assert_eq!(
        post(&viewer, &viewer_csrf, None).await.unwrap().status(),
        403
    );
    assert_eq!(c.job_by_name("kept").await.enabled, 1);

    // The admin's form with its token, from this origin: done, and audited.
    let origin = base.clone();
    let response = post(&admin, &csrf, Some(&origin)).await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(c.job_by_name("kept").await.enabled, 0);
    assert_eq!(patch(true).await.unwrap().status(), 200);

    // A bad parameter is answered as a page, like every console error.
    for path in ["/jobs?page=abc", "/jobs/x", "/jobs/1/runs/y"] {
        let response = client
            .get(format!("{base}{path}"))
            .header("cookie", &admin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("text/html"), "{path}: {kind}");
    }

    // A row the monitor found invalid can still be switched off.
    let broken = c.insert_job("broken", "61 * * * *", "true").await;
    wait_until(
        "the bad row's last_error",
        Duration::from_secs(30),
        || async { c.job_by_name("broken").await.last_error.map(|_| ()) },
    )
    .await;
    let response = post_to(&format!("/jobs/{broken}/disable"), &admin, &csrf, None)
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(c.job_by_name("broken").await.enabled, 0);

    // Signed out, the cookie opens nothing.
    let response = post_to("/logout", &admin, &csrf, None).await.unwrap();
    assert_eq!(response.status(), 303);
    let response = client
        .get(format!("{base}/jobs"))
        .header("cookie", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert!(
        response.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login")
    );
    assert_eq!(
        api(reqwest::Method::GET, "/jobs")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    c.shutdown().await;
}
