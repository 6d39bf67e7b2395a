//! The HTTP API served by the monitor: tokens and roles, every endpoint, validation, audit,
//! paging and filters, against a real cluster.

use std::time::Duration;

use gocron_tests::{Backend, Cluster, wait_until};
use sea_orm::EntityTrait as _;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

/// A client of one monitor's API.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// Sets the tokens on `c` and starts a monitor serving the API.
    async fn start(c: &mut Cluster) -> Api {
        c.set("HTTP", "ADMIN_TOKEN", ADMIN);
        c.set("HTTP", "VIEWER_TOKEN", VIEWER);
        let address = c.start_monitor_http("monitor").await;
        Api {
            base: format!("http://{address}"),
            http: reqwest::Client::new(),
        }
    }

    /// `method path` with `token` and a JSON `body`: the status and the JSON answer (null when
    /// there is none).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("HTTP body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{path}: {status} answer is not JSON ({e}): {text}"))
        };
        (status, value)
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, Some(ADMIN), body).await
    }

    async fn get(&self, path: &str) -> Value {
        let (status, value) = self.call("GET", path, Some(VIEWER), None).await;
        assert_eq!(status, 200, "GET {path}: {value}");
        value
    }
}

/// The error text of an error answer.
fn error(answer: &Value) -> &str {
    answer["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error answer: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_created_and_changed_through_the_api_run_and_every_change_is_audited() {
    let mut c = Cluster::new(Backend::Sqlite, &[("local", "127.0.0.1")]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    let api = Api::start(&mut c).await;

    // Health needs no token; everything else needs a known one; viewers only read.
    assert_eq!(
        api.call("GET", "/healthz", None, None).await,
        (200, json!({"status": "ok"}))
    );
    for token in [None, Some("not-a-token-0123456789")] {
        let (status, answer) = api.call("GET", "/api/v1/jobs", token, None).await;
        assert_eq!(status, 401, "{answer}");
        assert!(error(&answer).contains("Bearer"), "{answer}");
    }
    // The wrong token paused this address for a second (README: Guessing).
    wait_until(
        "the pause after a wrong token over",
        Duration::from_secs(10),
        || async {
            let (status, _) = api.call("GET", "/api/v1/jobs", Some(VIEWER), None).await;
            (status != 429).then_some(())
        },
    )
    .await;
    let job = json!({"name": "api-job", "rule": "* * * * * *", "command": "echo first"});
    let (status, answer) = api
        .call("POST", "/api/v1/jobs", Some(VIEWER), Some(job.clone()))
        .await;
    assert_eq!((status, error(&answer)), (403, "this token may only read"));

    // Rows that would not be scheduled are refused with last_error's words.
    for (bad, words) in [
        (json!({"rule": "nope"}), "invalid rule \"nope\""),
        (
            json!({"machine": "ghost"}),
            "unknown machine group \"ghost\"",
        ),
        (json!({"time_zone": "Mars/Base"}), "unknown time_zone"),
        (
            json!({"kind": "ftp"}),
            "kind \"ftp\" is not one of: shell, http",
        ),
    ] {
        let mut body = job.clone();
        for (k, v) in bad.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = api.admin("POST", "/api/v1/jobs", Some(body)).await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            error(&answer).contains(words),
            "{answer} should say {words}"
        );
    }
    let (status, answer) = api
        .admin(
            "POST",
            "/api/v1/jobs",
            Some(json!({"name": "x", "rule": "@daily"})),
        )
        .await;
    assert_eq!((status, error(&answer)), (422, "command is required"));
    let (status, answer) = api
        .admin(
            "POST",
            "/api/v1/jobs",
            Some(json!({"name": "x", "rule": "@daily", "command": "true", "colour": 1})),
        )
        .await;
    assert_eq!(status, 422, "an unknown column is refused: {answer}");
    assert!(error(&answer).contains("colour"), "{answer}");

    // Created: a row like one from SQL, published by the monitor, and it runs.
    let (status, created) = api.admin("POST", "/api/v1/jobs", Some(job.clone())).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("id");
    assert_eq!(
        (&created["name"], &created["enabled"], &created["machine"]),
        (&json!("api-job"), &json!(true), &json!(""))
    );
    assert!(created["next_fire_at"].is_string(), "{created}");
    let row = c.job_by_name("api-job").await;
    assert_eq!(
        (row.id, row.command.as_str(), row.enabled),
        (id, "echo first", 1)
    );
    let runs = c.wait_for_finished(id, 1, Duration::from_secs(30)).await;
    assert_eq!(runs[0].output.as_deref(), Some("first\n"), "{runs:#?}");

    // Changed: a bad change is refused and changes nothing; a good one changes what runs.
    let (status, answer) = api
        .admin(
            "PATCH",
            &format!("/api/v1/jobs/{id}"),
            Some(json!({"rule": "61 * * * *"})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(c.job_by_name("api-job").await.rule, "* * * * * *");
    let (status, changed) = api
        .admin(
            "PATCH",
            &format!("/api/v1/jobs/{id}"),
            Some(json!({"command": "echo second", "machine": "local"})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (&changed["command"], &changed["rule"]),
        (&json!("echo second"), &json!("* * * * * *"))
    );
    let second = wait_until(
        "a run of the changed command",
        Duration::from_secs(30),
        || async {
            c.runs(id)
                .await
                .into_iter()
                .find(|r| r.output.as_deref() == Some("second\n"))
        },
    )
    .await;

    // Reads: the job, its runs (newest first, without output), one run (every column).
    let shown = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        (&shown["id"], &shown["command"]),
        (&json!(id), &json!("echo second"))
    );
    let page = api
        .get(&format!(
            "/api/v1/jobs/{id}/runs?status=succeeded&per_page=500"
        ))
        .await;
    let listed = page["runs"].as_array().unwrap();
    assert!(!listed.is_empty() && page["total"].as_u64().unwrap() >= listed.len() as u64);
    let ticks: Vec<&str> = listed
        .iter()
        .map(|r| r["scheduled_at"].as_str().unwrap())
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {ticks:?}"
    );
    assert!(
        listed
            .iter()
            .all(|r| r["status"] == "succeeded" && r["job_id"] == id && r.get("output").is_none())
    );
    let run = api.get(&format!("/api/v1/runs/{}", second.id)).await;
    assert_eq!(
        (&run["output"], &run["status"], &run["trigger"]),
        (&json!("second\n"), &json!("succeeded"), &json!("schedule"))
    );
    assert!(
        run["executor"].as_str().unwrap().starts_with("exec-a@"),
        "{run}"
    );
    for key in [
        "scheduled_at",
        "started_at",
        "finished_at",
        "exit_code",
        "error",
        "overrun_at",
    ] {
        assert!(run.get(key).is_some(), "{key} missing from {run}");
    }
    let (status, answer) = api
        .call(
            "GET",
            &format!("/api/v1/jobs/{id}/runs?status=happy"),
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(status, 400, "{answer}");

    // Unknown ids are 404, as JSON.
    for (method, path) in [
        ("GET", "/api/v1/jobs/999999"),
        ("PATCH", "/api/v1/jobs/999999"),
        ("DELETE", "/api/v1/jobs/999999"),
        ("GET", "/api/v1/jobs/999999/runs"),
        ("GET", "/api/v1/runs/999999"),
        ("GET", "/api/v1/nothing"),
    ] {
        let body = (method == "PATCH").then(|| json!({"name": "y"}));
        let (status, answer) = api.admin(method, path, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
        error(&answer);
    }

    // Deleted: gone from the table and the API, and it stops running.
    let (status, answer) = api
        .admin("DELETE", &format!("/api/v1/jobs/{id}"), None)
        .await;
    assert_eq!((status, answer), (204, Value::Null));
    let (status, _) = api.admin("GET", &format!("/api/v1/jobs/{id}"), None).await;
    assert_eq!(status, 404);

    // Audit: one row per change that was made (the refused ones made none), newest first.
    let audit = api.get("/api/v1/audit").await;
    assert_eq!(audit["total"], 3, "{audit}");
    let records = audit["audit"].as_array().unwrap();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["job.delete", "job.update", "job.create"]);
    assert!(
        records
            .iter()
            .all(|r| r["actor"] == "admin" && r["job_id"] == id)
    );
    let (delete, update, create) = (&records[0], &records[1], &records[2]);
    assert_eq!(
        (&create["before"], &create["after"]["command"]),
        (&Value::Null, &json!("echo first"))
    );
    assert_eq!(
        (
            &update["before"]["command"],
            &update["after"]["command"],
            &update["after"]["machine"]
        ),
        (&json!("echo first"), &json!("echo second"), &json!("local"))
    );
    assert_eq!(
        (&delete["before"]["command"], &delete["after"]),
        (&json!("echo second"), &Value::Null)
    );
    let by_job = api
        .get(&format!("/api/v1/audit?job_id={id}&per_page=1&page=2"))
        .await;
    assert_eq!(
        (
            by_job["total"].as_u64(),
            by_job["audit"][0]["action"].as_str()
        ),
        (Some(3), Some("job.update"))
    );
    let stored = gocron_shared::entity::audit::Entity::find()
        .all(&c.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_routes_that_exist_and_need_a_token() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    let api = Api::start(&mut c).await;
    let (status, spec) = api.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3."),
        "{spec}"
    );
    let mut operations = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            operations += 1;
            let public = operation["security"] == json!([]);
            let path = path.replace("{id}", "1");
            let body = ["post", "patch"]
                .contains(&method.as_str())
                .then(|| json!({}));
            let (status, answer) = api.call(&method.to_uppercase(), &path, None, body).await;
            let expected = if public { 200 } else { 401 };
            assert_eq!(status, expected, "{method} {path}: {answer}");
        }
    }
    assert_eq!(operations, 19);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_lists_filter_and_page_with_the_right_total() {
    let mut c = Cluster::new(Backend::Sqlite, &[("g1", "127.0.0.1")]).await;
    // 510 rows in one statement: every third for g1, every fourth disabled, every tenth named
    // with a literal `_x` (a LIKE wildcard, which the search must escape), every fiftieth with a
    // rule the monitor marks in last_error.
    let rows: Vec<String> = (1..=510)
        .map(|i| {
            format!(
                "('job-{i:03}{}', '{}', 'true', '{}', {})",
                if i % 10 == 0 { "_x" } else { "" },
                if i % 50 == 0 { "nope" } else { "@daily" },
                if i % 3 == 0 { "g1" } else { "" },
                i32::from(i % 4 != 0)
            )
        })
        .collect();
    c.sql(
        &format!(
            "INSERT INTO cron_job (name, rule, command, machine, enabled) VALUES {}",
            rows.join(", ")
        ),
        vec![],
    )
    .await;
    let api = Api::start(&mut c).await;
    let all: Vec<i64> = (1..=510).collect();
    let count = |f: &dyn Fn(i64) -> bool| all.iter().filter(|i| f(**i)).count() as u64;

    // Every page in id order, then the cap of 500.
    let mut seen = Vec::new();
    for page in 1..=8 {
        let answer = api
            .get(&format!("/api/v1/jobs?per_page=70&page={page}"))
            .await;
        assert_eq!(answer["total"], 510);
        seen.extend(
            answer["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_i64().unwrap()),
        );
    }
    assert_eq!(seen, all);
    let answer = api.get("/api/v1/jobs?per_page=100000").await;
    assert_eq!(answer["jobs"].as_array().unwrap().len(), 500);

    // Filters, alone and together, with their totals.
    let total = |answer: &Value| answer["total"].as_u64().unwrap();
    // `0_` literally: only the `_x` names; `_` as a wildcard would match `job-001` too.
    let answer = api.get("/api/v1/jobs?q=0_").await;
    assert_eq!(total(&answer), count(&|i| i % 10 == 0));
    assert!(
        answer["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["name"].as_str().unwrap().ends_with("_x"))
    );
    let answer = api
        .get("/api/v1/jobs?machine=g1&enabled=false&per_page=5&page=2")
        .await;
    assert_eq!(total(&answer), count(&|i| i % 3 == 0 && i % 4 == 0));
    let ids: Vec<i64> = answer["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [72, 84, 96, 108, 120]);
    assert!(
        answer["jobs"][0]["next_fire_at"].is_null(),
        "a disabled job does not fire"
    );
    let answer = api.get("/api/v1/jobs?enabled=true&q=job-00").await;
    assert_eq!(total(&answer), count(&|i| i < 10 && i % 4 != 0));
    assert!(answer["jobs"][0]["next_fire_at"].is_string(), "{answer}");

    // has_error follows the monitor's verdicts in last_error.
    let bad = count(&|i| i % 50 == 0);
    wait_until(
        "the monitor's verdicts",
        Duration::from_secs(30),
        || async {
            let answer = api.get("/api/v1/jobs?has_error=true").await;
            (total(&answer) == bad).then_some(())
        },
    )
    .await;
    let answer = api.get("/api/v1/jobs?has_error=false&per_page=1").await;
    assert_eq!(total(&answer), 510 - bad);
    let answer = api.get("/api/v1/jobs?has_error=true").await;
    assert!(
        answer["jobs"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid rule \"nope\"")
    );

    // Malformed queries are 400, as JSON.
    for query in ["page=0", "enabled=maybe", "colour=red", "per_page=-1"] {
        let (status, answer) = api
            .call("GET", &format!("/api/v1/jobs?{query}"), Some(VIEWER), None)
            .await;
        assert_eq!(status, 400, "{query}: {answer}");
        error(&answer);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_writes_and_audits_on_mariadb_and_postgres() {
    for backend in [Backend::MariaDb, Backend::Postgres] {
        let mut c = Cluster::new(backend, &[]).await;
        let api = Api::start(&mut c).await;
        assert_eq!(api.call("GET", "/healthz", None, None).await.0, 200);
        let (status, created) = api
            .admin("POST", "/api/v1/jobs", Some(json!({"name": "Nightly_Backup", "rule": "@daily", "command": "true", "enabled": 0})))
            .await;
        assert_eq!(status, 201, "{backend:?}: {created}");
        let id = created["id"].as_i64().unwrap();
        let (status, changed) = api
            .admin(
                "PATCH",
                &format!("/api/v1/jobs/{id}"),
                Some(json!({"enabled": true, "timeout_secs": 30})),
            )
            .await;
        assert_eq!(status, 200, "{backend:?}: {changed}");
        assert_eq!(
            (&changed["enabled"], &changed["timeout_secs"]),
            (&json!(true), &json!(30))
        );
        assert!(
            changed["next_fire_at"].is_string(),
            "{backend:?}: {changed}"
        );
        let found = api.get("/api/v1/jobs?q=backup").await;
        assert_eq!(found["total"], 1, "{backend:?}: the search ignores case");
        let found = api.get("/api/v1/jobs?q=h_l").await;
        assert_eq!(found["total"], 0, "{backend:?}: _ is not a wildcard");
        let (status, answer) = api
            .admin(
                "PATCH",
                &format!("/api/v1/jobs/{id}"),
                Some(json!({"rule": "@nope"})),
            )
            .await;
        assert_eq!(status, 422, "{backend:?}: {answer}");
        let (status, _) = api
            .admin("DELETE", &format!("/api/v1/jobs/{id}"), None)
            .await;
        assert_eq!(status, 204, "{backend:?}");
        let stored = gocron_shared::entity::audit::Entity::find()
            .all(&c.db)
            .await
            .unwrap();
        let actions: Vec<(&str, bool, bool)> = stored
            .iter()
            .map(|r| (r.action.as_str(), r.before.is_some(), r.after.is_some()))
            .collect();
        assert_eq!(
            actions,
            [
                ("job.create", false, true),
                ("job.update", true, true),
                ("job.delete", true, false)
            ],
            "{backend:?}"
        );
        let update: Value = serde_json::from_str(stored[1].before.as_deref().unwrap()).unwrap();
        assert_eq!(update["enabled"], false, "{backend:?}");
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_database_does_not_answer() {
    let c = Cluster::new(Backend::Sqlite, &[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // A connection that never reaches a database.
    let state = gocron_web::AppState::new(sea_orm::DatabaseConnection::default(), &c.base_config());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(gocron_web::serve(listener, state, stop.clone()));
    let api = Api {
        base: format!("http://{address}"),
        http: reqwest::Client::new(),
    };
    let (status, answer) = api.call("GET", "/healthz", None, None).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        error(&answer).contains("the database does not answer"),
        "{answer}"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the API stops on its token")
        .unwrap()
        .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_and_kill_through_the_api_and_the_cluster_as_it_stands() {
    let mut c = Cluster::new(
        Backend::Sqlite,
        &[("local", "127.0.0.1"), ("far", "10.9.9.9")],
    )
    .await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    let api = Api::start(&mut c).await;
    // Once a year: every run here is a manual one.
    let quick = c.insert_job("quick", "0 0 1 1 *", "echo now$SUFFIX").await;
    let long = c
        .insert_job_with(
            "long",
            "0 0 1 1 *",
            "sleep 60",
            &[("machine", "local".into())],
        )
        .await;
    let off = c
        .insert_job_with("off", "0 0 1 1 *", "true", &[("enabled", 0.into())])
        .await;
    c.wait_published(quick).await;
    c.wait_published(long).await;

    // Viewers may not; unknown ids are 404; a disabled job is refused with why.
    for path in [
        format!("/api/v1/jobs/{quick}/run"),
        "/api/v1/runs/1/kill".to_owned(),
    ] {
        let (status, answer) = api.call("POST", &path, Some(VIEWER), None).await;
        assert_eq!((status, error(&answer)), (403, "this token may only read"));
    }
    let (status, answer) = api.admin("POST", "/api/v1/jobs/999999/run", None).await;
    assert_eq!((status, error(&answer)), (404, "no job 999999"));
    let (status, answer) = api.admin("POST", "/api/v1/runs/999999/kill", None).await;
    assert_eq!((status, error(&answer)), (404, "no run 999999"));
    let (status, answer) = api
        .admin("POST", &format!("/api/v1/jobs/{off}/run"), None)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(error(&answer).contains("disabled"), "{answer}");

    // Run now: 202 once a dispatcher took it, with the run that ends succeeded.
    let (status, taken) = api
        .admin("POST", &format!("/api/v1/jobs/{quick}/run"), None)
        .await;
    assert_eq!(status, 202, "{taken}");
    let run_id = taken["run_id"].as_i64().expect("run_id");
    let run = wait_until(
        "the manual run succeeded",
        Duration::from_secs(30),
        || async {
            let run = api.get(&format!("/api/v1/runs/{run_id}")).await;
            (run["status"] == "succeeded").then_some(run)
        },
    )
    .await;
    assert_eq!(
        (
            &run["job_id"],
            &run["trigger"],
            &run["output"],
            &run["scheduled_at"]
        ),
        (
            &json!(quick),
            &json!("manual"),
            &json!("now\n"),
            &taken["scheduled_at"]
        )
    );

    // A run-now's own variables: a bad line is a 400, a body of another shape a 422; neither
    // runs anything (the audit below holds the runs made). A good one: at the end.
    let (status, answer) = api
        .admin(
            "POST",
            &format!("/api/v1/jobs/{quick}/run"),
            Some(json!({"env": "GOCRON_RUN_ID=1"})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        error(&answer).contains("GOCRON_RUN_ID is gocron's own"),
        "{answer}"
    );
    let (status, answer) = api
        .admin(
            "POST",
            &format!("/api/v1/jobs/{quick}/run"),
            Some(json!({"environment": "A=1"})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");

    // last_run, in a job and in a page of jobs (null for a job that never ran).
    let shown = api.get(&format!("/api/v1/jobs/{quick}")).await;
    assert_eq!(
        shown["last_run"],
        json!({"id": run_id, "status": "succeeded", "scheduled_at": run["scheduled_at"]})
    );
    let page = api.get("/api/v1/jobs").await;
    let last: Vec<(i64, Value)> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["id"].as_i64().unwrap(), j["last_run"].clone()))
        .collect();
    assert_eq!(
        last,
        [
            (quick, shown["last_run"].clone()),
            (long, Value::Null),
            (off, Value::Null)
        ]
    );
    // A finished run cannot be killed.
    let (status, answer) = api
        .admin("POST", &format!("/api/v1/runs/{run_id}/kill"), None)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(error(&answer).contains("not in flight"), "{answer}");

    // A long run: the executor shows it in flight, and a kill stops it.
    let (status, taken) = api
        .admin("POST", &format!("/api/v1/jobs/{long}/run"), None)
        .await;
    assert_eq!(status, 202, "{taken}");
    let long_run = taken["run_id"].as_i64().expect("run_id");
    let executors = wait_until(
        "the run in flight on exec-a",
        Duration::from_secs(30),
        || async {
            let list = api.get("/api/v1/executors").await;
            (list["executors"][0]["runs_in_flight"] == 1).then_some(list)
        },
    )
    .await;
    let executors = executors["executors"].as_array().unwrap();
    assert_eq!(executors.len(), 1, "{executors:?}");
    let exec = &executors[0];
    assert_eq!(
        (&exec["name"], &exec["groups"]),
        (&json!("exec-a"), &json!(["local"]))
    );
    assert!(
        exec["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{exec}"
    );
    assert!(
        exec["since"].as_str().is_some_and(|s| !s.is_empty()),
        "{exec}"
    );
    let dispatchers = api.get("/api/v1/dispatchers").await;
    assert_eq!(
        dispatchers["dispatchers"][0]["name"], "disp-0",
        "{dispatchers}"
    );
    assert_eq!(dispatchers["dispatchers"].as_array().unwrap().len(), 1);

    let (status, answer) = api
        .admin("POST", &format!("/api/v1/runs/{long_run}/kill"), None)
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({"run_id": long_run, "job_id": long}));
    let killed = wait_until("the run killed", Duration::from_secs(20), || async {
        let run = api.get(&format!("/api/v1/runs/{long_run}")).await;
        (run["status"] == "killed").then_some(run)
    })
    .await;
    assert_eq!(
        killed["error"],
        "killed on request of admin (HTTP API): process group stopped"
    );
    wait_until("no run in flight", Duration::from_secs(20), || async {
        let list = api.get("/api/v1/executors").await;
        (list["executors"][0]["runs_in_flight"] == 0).then_some(())
    })
    .await;
    let (status, answer) = api
        .admin("POST", &format!("/api/v1/runs/{long_run}/kill"), None)
        .await;
    assert_eq!(status, 409, "{answer}");

    // Audited: two runs and a kill, newest first.
    let audit = api.get("/api/v1/audit").await;
    let records: Vec<(&str, i64, i64)> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["job_id"].as_i64().unwrap(),
                r["after"]["run_id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        records,
        [
            ("run.kill", long, long_run),
            ("job.run", long, long_run),
            ("job.run", quick, run_id)
        ]
    );

    // A run-now's own variables reach the command, and the audit names them (not their values).
    let (status, taken) = api
        .admin(
            "POST",
            &format!("/api/v1/jobs/{quick}/run"),
            Some(json!({"env": "SUFFIX=-with-env"})),
        )
        .await;
    assert_eq!(status, 202, "{taken}");
    let with_env = taken["run_id"].as_i64().expect("run_id");
    let run = wait_until(
        "the run with variables",
        Duration::from_secs(30),
        || async {
            let run = api.get(&format!("/api/v1/runs/{with_env}")).await;
            (run["status"] == "succeeded").then_some(run)
        },
    )
    .await;
    assert_eq!(run["output"], json!("now-with-env\n"));
    let audit = api.get("/api/v1/audit").await;
    assert_eq!(audit["audit"][0]["after"]["env"], json!(["SUFFIX"]));
    c.shutdown().await;
}

/// The body of `GET path` with the viewer token, as text, and its content type.
async fn text(api: &Api, path: &str) -> (u16, String, String) {
    let response = api
        .http
        .get(format!("{}{path}", api.base))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = tokio::time::timeout(Duration::from_secs(60), response.text())
        .await
        .unwrap_or_else(|_| panic!("GET {path}: the body did not end within 60 s"))
        .expect("HTTP body");
    (status, kind, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_a_runs_output_while_it_runs_and_ends_when_it_ends() {
    let mut c = Cluster::new(Backend::Sqlite, &[("local", "127.0.0.1")]).await;
    // A tail that holds the whole output, so that what the stream held can be compared with it.
    c.start_executor_with("exec-a", &[("EXECUTOR", "OUTPUT_KIB", "1024")])
        .await;
    c.start_dispatcher("disp-0");
    let api = Api::start(&mut c).await;
    // A first line, then a wait for a file only this test creates (not for a duration), then
    // about 600 KB: ten chunks of the RPC at least.
    let barrier = c.path("go");
    let command = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.05; done; seq 1 100000; echo last",
        barrier.display()
    );
    let job = c
        .insert_job_with(
            "follow",
            "0 0 1 1 *",
            &command,
            &[("machine", "local".into())],
        )
        .await;
    c.wait_published(job).await;
    let (status, taken) = api
        .admin("POST", &format!("/api/v1/jobs/{job}/run"), None)
        .await;
    assert_eq!(status, 202, "{taken}");
    let run_id = taken["run_id"].as_i64().expect("run_id");

    let url = format!("{}/api/v1/runs/{run_id}/output?follow=true", api.base);
    let anonymous = api.http.get(&url).send().await.expect("HTTP request");
    assert_eq!(anonymous.status().as_u16(), 401);
    let mut stream = api
        .http
        .get(&url)
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(stream.status().as_u16(), 200);
    assert_eq!(
        stream.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    // The first line arrives while the job waits for the barrier: before the run can end.
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while got.len() < "first\n".len() {
            let chunk = stream.chunk().await.expect("the stream");
            got.extend_from_slice(&chunk.expect("the stream ended before the first line"));
        }
    })
    .await
    .expect("the first line within 30 s");
    assert_eq!(String::from_utf8_lossy(&got), "first\n");
    // Marked `running` once it has run for a second (RUNNING_AFTER), while it still waits.
    wait_until(
        "the run marked running",
        Duration::from_secs(10),
        || async {
            let run = api.get(&format!("/api/v1/runs/{run_id}")).await;
            (run["status"] == "running").then_some(())
        },
    )
    .await;
    assert!(!barrier.exists());

    // Let it go on: the rest comes, and the stream ends once the run has ended.
    std::fs::write(&barrier, "").expect("the barrier");
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = stream.chunk().await.expect("the stream") {
            got.extend_from_slice(&chunk);
        }
    })
    .await
    .expect("the stream to end within 60 s");
    let numbers: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    let expected = format!("first\n{numbers}last\n");
    let got = String::from_utf8(got).expect("UTF-8");
    let differs = got
        .bytes()
        .zip(expected.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    assert!(
        got == expected,
        "the stream ({} bytes) differs from the output ({} bytes) at byte {differs}: {:?}",
        got.len(),
        expected.len(),
        &got[differs.saturating_sub(40)..(differs + 40).min(got.len())]
    );
    let ended = api.get(&format!("/api/v1/runs/{run_id}")).await;
    assert_eq!(ended["status"], "succeeded", "{}", ended["error"]);
    assert!(
        ended["output"] == expected.as_str(),
        "recorded output differs"
    );

    // An ended run's output, followed or not, is the recorded one; unknown runs are 404.
    for query in ["", "?follow=true"] {
        let (status, kind, body) =
            text(&api, &format!("/api/v1/runs/{run_id}/output{query}")).await;
        assert_eq!((status, kind.as_str()), (200, "text/plain; charset=utf-8"));
        assert!(body == expected, "{query}: {} bytes", body.len());
    }
    let (status, answer) = api
        .call("GET", "/api/v1/runs/999999/output", Some(VIEWER), None)
        .await;
    assert_eq!((status, error(&answer)), (404, "no run 999999"));
    let (status, _) = api
        .call(
            "GET",
            &format!("/api/v1/runs/{run_id}/output?follow=maybe"),
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(status, 400);

    // A run held by an executor that cannot be reached (its live entry names an address where
    // nothing listens): the stream ends with a line saying so.
    use gocron_shared::entity::run;
    use sea_orm::{ActiveModelTrait as _, Set};
    let keys = gocron_shared::keys::EtcdKeys::new(&c.base_config().etcd.prefix);
    let registered = c
        .etcd()
        .await
        .get(keys.executor("exec-a"), None)
        .await
        .expect("etcd");
    let mut ghost: gocron_shared::machine::ExecutorInfo =
        serde_json::from_slice(registered.kvs()[0].value()).expect("executor info");
    // Its instance stays the live one: the monitor does not take the run for lost.
    ghost.address = "127.0.0.1:9".parse().unwrap();
    let row = run::ActiveModel {
        job_id: Set(job),
        scheduled_at: Set(chrono::Utc::now()),
        status: Set("running".into()),
        executor: Set(ghost.to_string()),
        trigger: Set("manual".into()),
        ..Default::default()
    }
    .insert(&c.db)
    .await
    .expect("a run row");
    let fences = c.fences().await;
    let claimed = fences
        .claim_run(
            job,
            row.id,
            &ghost.to_string(),
            Some(&gocron_shared::live::Holder::executor(&ghost)),
        )
        .await
        .expect("redis");
    assert_eq!(claimed, None);
    let (status, _, body) =
        text(&api, &format!("/api/v1/runs/{}/output?follow=true", row.id)).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("[gocron: executor exec-a@127.0.0.1:9 cannot be reached (")
            && body.ends_with("); the live output stops here]\n"),
        "{body}"
    );
    fences.release(job, row.id).await.expect("redis");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_is_504_when_no_dispatcher_takes_it() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    let api = Api::start(&mut c).await;
    let job = c.insert_job("lonely", "0 0 1 1 *", "true").await;
    c.wait_published(job).await;
    let (status, answer) = api
        .admin("POST", &format!("/api/v1/jobs/{job}/run"), None)
        .await;
    assert_eq!(status, 504, "{answer}");
    assert!(error(&answer).contains("no dispatcher took"), "{answer}");
    // Withdrawn: nothing waits in etcd for a dispatcher that starts later.
    let keys = gocron_shared::keys::EtcdKeys::new(&c.base_config().etcd.prefix);
    let found = c
        .etcd()
        .await
        .get(
            keys.manual(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(found.count(), 0);
    let audit = api.get("/api/v1/audit").await;
    assert_eq!(audit["total"], 0, "{audit}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_list_shows_a_failing_jobs_alarm_without_its_body() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.set("ALARM", "CHECK_MS", "200");
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    let api = Api::start(&mut c).await;
    let fails = c
        .insert_job("fails", "* * * * * *", "echo disk full; exit 3")
        .await;
    let page = wait_until("a run_failed alarm", Duration::from_secs(30), || async {
        let page = api
            .get(&format!("/api/v1/alarms?kind=run_failed&job_id={fails}"))
            .await;
        (page["total"].as_u64() >= Some(1)).then_some(page)
    })
    .await;
    let alarm = &page["alarms"][0];
    // No mail or SMS is configured: recorded for the record only.
    assert_eq!(
        (
            &alarm["kind"],
            &alarm["job_id"],
            &alarm["channel"],
            &alarm["status"]
        ),
        (
            &json!("run_failed"),
            &json!(fails),
            &json!("none"),
            &json!("no_recipient")
        )
    );
    assert!(alarm["run_id"].is_i64(), "{alarm}");
    assert!(
        alarm["subject"].as_str().unwrap().contains("run_failed"),
        "{alarm}"
    );
    for key in ["status", "created_at", "sent_at", "error", "attempts"] {
        assert!(alarm.get(key).is_some(), "{key} missing from {alarm}");
    }
    assert!(alarm.get("body").is_none(), "{alarm}");
    // Newest first; filters narrow; a bad query is 400.
    let all = api.get("/api/v1/alarms?per_page=500").await;
    let ids: Vec<i64> = all["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let status = alarm["status"].as_str().unwrap();
    let same = api
        .get(&format!(
            "/api/v1/alarms?status={status}&job_id={fails}&per_page=1"
        ))
        .await;
    assert!(same["total"].as_u64().unwrap() >= 1, "{same}");
    let none = api.get("/api/v1/alarms?kind=nothing_like_it").await;
    assert_eq!(none["total"], 0, "{none}");
    let none = api
        .get(&format!("/api/v1/alarms?job_id={}", fails + 1))
        .await;
    assert_eq!(none["total"], 0, "{none}");
    let (status, answer) = api
        .call("GET", "/api/v1/alarms?page=0", Some(VIEWER), None)
        .await;
    assert_eq!(status, 400, "{answer}");
    c.shutdown().await;
}

/// Not a pass/fail test (timings depend on the machine): `cargo test -p gocron-tests --test e2e
/// api::pages_at_100k -- --ignored --nocapture` prints how long API and console pages take at
/// 100,000 jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn pages_at_100k_jobs() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
         INSERT INTO cron_job (name, rule, command, enabled) \
         SELECT 'job-' || i, '@daily', 'true', i % 2 FROM n",
        vec![],
    )
    .await;
    let api = Api::start(&mut c).await;
    for query in [
        "per_page=100",
        "per_page=100&page=999",
        "per_page=500&page=199",
        "q=job-9999&per_page=100",
        "enabled=false&per_page=100&page=400",
    ] {
        let started = std::time::Instant::now();
        let answer = api.get(&format!("/api/v1/jobs?{query}")).await;
        println!(
            "GET /api/v1/jobs?{query}: {} jobs of {} in {:?}",
            answer["jobs"].as_array().unwrap().len(),
            answer["total"],
            started.elapsed()
        );
    }
    // The console's pages of the same, signed in.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = http
        .post(format!("{}/login", api.base))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .unwrap();
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    for path in [
        "/jobs",
        "/jobs?page=1999",
        "/jobs?q=job-9999",
        "/jobs?state=disabled&page=900",
        "/",
    ] {
        let started = std::time::Instant::now();
        let response = http
            .get(format!("{}{path}", api.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(status, 200, "console GET {path}");
        let bytes = response.bytes().await.unwrap().len();
        println!(
            "console GET {path}: {status}, {bytes} bytes in {:?}",
            started.elapsed()
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_reported_once_per_dedup_key_and_run_their_jobs() {
    let mut c = Cluster::new(Backend::Sqlite, &[]).await;
    c.start_executor("exec-a").await;
    c.start_dispatcher("disp-0");
    let api = Api::start(&mut c).await;
    let out = c.path("paid.txt");
    let job = c
        .insert_job(
            "on-paid",
            "@event order.paid",
            &format!(
                "echo \"$GOCRON_EVENT_ID $GOCRON_EVENT_PAYLOAD\" >> {}",
                out.display()
            ),
        )
        .await;
    c.wait_published(job).await;
    let paid = json!({"name": "order.paid", "payload": "order 7", "dedup_key": "o7"});
    // A viewer may only read.
    let (status, _) = api
        .call("POST", "/api/v1/events", Some(VIEWER), Some(paid.clone()))
        .await;
    assert_eq!(status, 403);
    let (status, first) = api
        .admin("POST", "/api/v1/events", Some(paid.clone()))
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(
        (first["name"].as_str(), first.get("duplicate")),
        (Some("order.paid"), None)
    );
    // Reported again: the stored event, and nothing more fires.
    let (status, again) = api.admin("POST", "/api/v1/events", Some(paid)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["id"].clone(), again["duplicate"].clone()),
        (first["id"].clone(), json!(true))
    );
    for (body, needle) in [
        (json!({"name": "order paid"}), "holds ' '"),
        (
            json!({"name": "x", "payload": "y".repeat(65537)}),
            "at most 65536",
        ),
    ] {
        let (status, answer) = api.admin("POST", "/api/v1/events", Some(body)).await;
        assert_eq!(status, 422, "{answer}");
        assert!(error(&answer).contains(needle), "{answer}");
    }
    let (status, answer) = api
        .admin(
            "POST",
            "/api/v1/events",
            Some(json!({"name": "x", "colour": "red"})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let runs = c.wait_for_finished(job, 1, Duration::from_secs(60)).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].trigger.as_str(), runs[0].source_id),
        ("event", first["id"].as_i64().unwrap())
    );
    assert_eq!(
        gocron_tests::lines(&out),
        [format!("{} order 7", first["id"])]
    );
    let page = api.get("/api/v1/events?name=order.paid").await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["events"][0]["payload"], "order 7");
    c.shutdown().await;
}
