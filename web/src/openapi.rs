//! `GET /api/v1/openapi.json`: the OpenAPI 3 document of [`crate::router`]'s routes, written by
//! hand (the e2e tests call every operation it lists, so a route it names must exist).

use axum::Json;
use serde_json::{Value, json};

/// Every operation: (method, path), as the document lists them.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/api/v1/jobs"),
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{id}"),
    ("patch", "/api/v1/jobs/{id}"),
    ("delete", "/api/v1/jobs/{id}"),
    ("get", "/api/v1/jobs/{id}/runs"),
    ("post", "/api/v1/jobs/{id}/run"),
    ("get", "/api/v1/runs/{id}"),
    ("get", "/api/v1/runs/{id}/output"),
    ("post", "/api/v1/runs/{id}/kill"),
    ("get", "/api/v1/executors"),
    ("get", "/api/v1/dispatchers"),
    ("get", "/api/v1/alarms"),
    ("get", "/api/v1/events"),
    ("post", "/api/v1/events"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/rules/next"),
    ("get", "/api/v1/openapi.json"),
];

/// The handler: the document needs no token (it describes, it holds no data).
pub async fn document() -> Json<Value> {
    Json(spec())
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false,
           "schema": {"type": ty}, "description": description})
}

fn paging() -> [Value; 2] {
    [
        query("page", "integer", "The page, from 1 (default 1)."),
        query(
            "per_page",
            "integer",
            "Rows a page (default 50, at most 500).",
        ),
    ]
}

fn id() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}})
}

fn body(schema: &str) -> Value {
    json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(description: &str, schema: &str) -> Value {
    let mut r = body(schema);
    r["description"] = json!(description);
    r
}

/// The document.
pub fn spec() -> Value {
    let auth = || {
        json!({
            "400": error("A malformed parameter or body."),
            "401": error("No token, or an unknown one."),
        })
    };
    let write = || {
        let mut r = auth();
        r["403"] = error("The viewer token may only read.");
        r["404"] = error("No such job.");
        r["422"] = error("The job would not be scheduled: the words `last_error` would hold.");
        r
    };
    let with = |mut base: Value, extra: Value| {
        for (k, v) in extra.as_object().into_iter().flatten() {
            base[k] = v.clone();
        }
        base
    };
    let [page, per_page] = paging();
    let string = json!({"type": "string"});
    let stamp = json!({"type": "string", "format": "date-time"});
    let nullable_stamp = json!({"type": ["string", "null"], "format": "date-time"});
    let job_columns = json!({
        "name": string, "rule": string, "command": string,
        "kind": {"type": "string", "enum": ["shell", "http"]},
        "machine": string, "timeout_secs": {"type": "integer", "minimum": 0},
        "timeout_policy": {"type": "string", "enum": ["abandon", "kill", "sync"]},
        "time_zone": string, "enabled": {"type": "boolean"},
        "alarm_emails": string, "alarm_mobiles": string,
        "misfire": {"type": "string", "enum": ["skip", "once", "all"]},
        "env": {"type": "string", "description": "KEY=VALUE lines: a shell job's own variables."},
        "workdir": {"type": "string", "description": "An absolute path: where a shell job starts; empty: the executor's own."},
        "retries": {"type": "integer", "minimum": 0, "maximum": 100,
            "description": "How many times a run ending failed, timeout, lost or no_executor is run again."},
        "retry_delay_secs": {"type": "integer", "minimum": 0, "maximum": 3600,
            "description": "Seconds before the first retry; doubling for each next one, at most 3600."},
        "delay_secs": {"type": "integer", "minimum": 0, "maximum": 2592000,
            "description": "For an @event job: seconds between the event and its run."},
        "on_success": {"type": "string", "description": "Jobs (ids or names, comma-separated) started when a run succeeds."},
        "on_failure": {"type": "string", "description": "Jobs started when a run ends failed, timeout, lost or no_executor with no retry left."},
        "route": {"type": "string", "enum": ["round_robin", "random", "least_busy", "hash", "broadcast", "shard"],
            "description": "Which executor of the group is offered a run first."},
    });
    let mut job = job_columns.clone();
    for (k, v) in [
        ("id", json!({"type": "integer"})),
        ("created_at", stamp.clone()),
        ("updated_at", stamp.clone()),
        ("last_error", json!({"type": ["string", "null"]})),
        ("done_at", nullable_stamp.clone()),
        ("next_fire_at", nullable_stamp.clone()),
    ] {
        job[k] = v;
    }
    job["last_run"] = json!({"type": ["object", "null"],
        "description": "The run of the job's newest tick; null when it has none.",
        "properties": {"id": {"type": "integer"}, "status": string, "scheduled_at": stamp}});
    let run_columns = json!({
        "id": {"type": "integer"}, "job_id": {"type": "integer"}, "scheduled_at": stamp,
        "status": {"type": "string", "enum": ["dispatched", "running", "succeeded", "failed",
            "no_executor", "timeout", "killed", "lost", "skipped", "missed"]},
        "executor": string, "started_at": nullable_stamp, "finished_at": nullable_stamp,
        "exit_code": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]},
        "trigger": {"type": "string", "enum": ["schedule", "manual", "retry", "event", "chain"]},
        "overrun_at": nullable_stamp,
        "attempt": {"type": "integer", "minimum": 1},
        "retry_of": {"type": ["integer", "null"], "description": "A retry's first attempt."},
        "source_id": {"type": "integer",
            "description": "The event (trigger event), the parent run (chain), the run a retry follows; 0 otherwise."},
        "shard_index": {"type": "integer", "minimum": 0,
            "description": "The run's place among its tick's runs (route broadcast or shard): GOCRON_SHARD_INDEX."},
        "shard_total": {"type": "integer", "minimum": 0,
            "description": "How many runs its tick has (GOCRON_SHARD_TOTAL); 0 for a tick of one run."},
    });
    let mut run = run_columns.clone();
    run["output"] = json!({"type": ["string", "null"]});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "gocron HTTP API",
            "version": gocron_shared::VERSION,
            "description": "Served by the monitor on [http] listen. Every route but /healthz and \
                this document needs `Authorization: Bearer <token>`: admin_token may change jobs, \
                viewer_token may only read. Errors are {\"error\": \"...\"}.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "gocron_session",
                    "description": "A console session (sign in at /login). Changes made with it need its CSRF token in X-CSRF-Token."}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": string}},
                "Job": {"type": "object", "properties": job},
                "JobInput": {"type": "object", "additionalProperties": false,
                    "description": "POST: name, rule and command are required, the rest default as \
                        in the table. PATCH: only the given columns change. enabled also takes 1 or 0.",
                    "properties": job_columns},
                "JobPage": {"type": "object", "properties": {
                    "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                    "total": {"type": "integer"}}},
                "Run": {"type": "object", "properties": run},
                "RunSummary": {"type": "object", "description": "A run without its output.",
                    "properties": run_columns},
                "RunPage": {"type": "object", "properties": {
                    "runs": {"type": "array", "items": {"$ref": "#/components/schemas/RunSummary"}},
                    "total": {"type": "integer"}}},
                "Audit": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "at": stamp, "actor": string,
                    "action": {"type": "string", "enum": ["job.create", "job.update", "job.delete",
                        "job.run", "run.kill"]},
                    "job_id": {"type": ["integer", "null"]},
                    "before": {"description": "The job before the change; null for a creation, a run or a kill."},
                    "after": {"description": "The job after the change; null for a deletion; for a run or a kill, {run_id, scheduled_at}."}}},
                "RunNow": {"type": "object", "description": "What a run-now may add (the body may be left out).",
                    "properties": {"env": {"type": "string",
                        "description": "KEY=VALUE lines for this run only, on top of the job's env."}}},
                "Taken": {"type": "object", "description": "The run a dispatcher made of a run-now request.",
                    "properties": {"run_id": {"type": "integer"}, "job_id": {"type": "integer"},
                        "scheduled_at": stamp, "status": string}},
                "NextFires": {"type": "object", "properties": {
                    "next": {"type": "array", "items": stamp},
                    "shown": {"type": "array", "items": string,
                        "description": "The same instants in the rule's zone, as people read them."},
                    "time_zone": string}},
                "Killing": {"type": "object", "properties": {
                    "run_id": {"type": "integer"}, "job_id": {"type": "integer"}}},
                "ExecutorList": {"type": "object", "properties": {"executors": {"type": "array",
                    "items": {"type": "object", "properties": {
                        "name": string, "address": string,
                        "groups": {"type": "array", "items": string,
                            "description": "The [machine] groups it is a member of."},
                        "runs_in_flight": {"type": "integer"},
                        "since": {"type": "string", "description": "When it started and registered (RFC 3339)."},
                        "version": string}}}}},
                "DispatcherList": {"type": "object", "properties": {"dispatchers": {"type": "array",
                    "items": {"type": "object", "properties": {
                        "name": string, "since": {"type": ["string", "null"]},
                        "version": {"type": ["string", "null"]}}}}}},
                "AlarmPage": {"type": "object", "properties": {
                    "alarms": {"type": "array", "items": {"type": "object",
                        "description": "An alarm without its body and recipients.",
                        "properties": {
                            "id": {"type": "integer"}, "kind": string,
                            "channel": {"type": "string", "enum": ["mail", "sms", "none"]},
                            "job_id": {"type": "integer", "description": "0: about no job."},
                            "run_id": {"type": ["integer", "null"]},
                            "status": {"type": "string", "enum": ["pending", "sending", "sent",
                                "failed", "held", "summarised", "capped", "no_recipient"]},
                            "subject": string, "attempts": {"type": "integer"},
                            "error": {"type": ["string", "null"]},
                            "created_at": stamp, "sent_at": nullable_stamp}}},
                    "total": {"type": "integer"}}},
                "Event": {"type": "object", "properties": {
                    "id": {"type": "integer", "description": "GOCRON_EVENT_ID; the source_id of its runs."},
                    "name": string, "payload": {"type": ["string", "null"]},
                    "dedup_key": {"type": ["string", "null"]}, "created_at": stamp,
                    "duplicate": {"type": "boolean",
                        "description": "Present (true) when this is the event reported earlier with the same dedup_key."}}},
                "EventInput": {"type": "object", "required": ["name"], "additionalProperties": false,
                    "properties": {
                        "name": {"type": "string", "description": "The jobs with rule @event NAME run."},
                        "payload": {"type": "string", "description": "GOCRON_EVENT_PAYLOAD and stdin; at most 65536 bytes."},
                        "dedup_key": {"type": "string", "description": "The same name and key again fires nothing more."}}},
                "EventPage": {"type": "object", "properties": {
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                    "total": {"type": "integer"}}},
                "AuditPage": {"type": "object", "properties": {
                    "audit": {"type": "array", "items": {"$ref": "#/components/schemas/Audit"}},
                    "total": {"type": "integer"}}},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/healthz": {"get": {
                "summary": "Whether the monitor's database answers.", "security": [],
                "responses": {
                    "200": {"description": "{\"status\": \"ok\"}"},
                    "503": error("The database does not answer."),
                }}},
            "/api/v1/jobs": {
                "get": {"summary": "A page of jobs, in id order, with the total matching.",
                    "parameters": [
                        query("q", "string", "Name contains (case-insensitive)."),
                        query("machine", "string", "Machine group (empty: any executor)."),
                        query("enabled", "boolean", "Enabled or disabled jobs."),
                        query("has_error", "boolean", "Jobs with or without a last_error."),
                        page, per_page],
                    "responses": with(auth(), json!({"200": ok("The page.", "JobPage")}))},
                "post": {"summary": "Creates a job (a cron_job row; the monitor publishes it).",
                    "requestBody": with(body("JobInput"), json!({"required": true})),
                    "responses": with(write(), json!({"201": ok("The job.", "Job")}))}},
            "/api/v1/jobs/{id}": {
                "parameters": [id()],
                "get": {"summary": "One job.",
                    "responses": with(auth(), json!({"200": ok("The job.", "Job"),
                        "404": error("No such job.")}))},
                "patch": {"summary": "Changes the given columns of a job.",
                    "requestBody": with(body("JobInput"), json!({"required": true})),
                    "responses": with(write(), json!({"200": ok("The job.", "Job")}))},
                "delete": {"summary": "Deletes a job (its runs stay).",
                    "responses": with(write(), json!({"204": {"description": "Deleted."}}))}},
            "/api/v1/jobs/{id}/runs": {
                "parameters": [id()],
                "get": {"summary": "A page of a job's runs, newest tick first, without output.",
                    "parameters": [query("status", "string", "Runs with this status."),
                        page, per_page],
                    "responses": with(auth(), json!({"200": ok("The page.", "RunPage"),
                        "404": error("No such job.")}))}},
            "/api/v1/jobs/{id}/run": {
                "parameters": [id()],
                "post": {"summary": "Runs a job now, through the dispatchers (trigger manual); \
                    answers once a dispatcher has written the run's row.",
                    "requestBody": with(body("RunNow"), json!({"required": false})),
                    "responses": with(auth(), json!({
                        "202": ok("The run the request became.", "Taken"),
                        "400": error("A line of env is not KEY=VALUE, or names a GOCRON_* variable."),
                        "403": error("The viewer token may only read."),
                        "404": error("No such job."),
                        "409": error("The job is disabled, done, or not published yet."),
                        "422": error("The job is invalid: the words of its last_error."),
                        "503": error("etcd does not answer."),
                        "504": error("No dispatcher took the request within 10 s; it was withdrawn.")}))}},
            "/api/v1/runs/{id}/kill": {
                "parameters": [id()],
                "post": {"summary": "Asks the executor running a run to stop it (it ends killed).",
                    "responses": with(auth(), json!({
                        "202": ok("The executor accepted.", "Killing"),
                        "403": error("The viewer token may only read."),
                        "404": error("No such run."),
                        "409": error("The run is not in flight, or is still being handed over."),
                        "502": error("The executor cannot be reached or refused."),
                        "503": error("Redis does not answer.")}))}},
            "/api/v1/executors": {
                "get": {"summary": "The executors registered in etcd, with their groups and runs in flight.",
                    "responses": with(auth(), json!({"200": ok("The executors, by name.", "ExecutorList"),
                        "503": error("etcd or Redis does not answer.")}))}},
            "/api/v1/dispatchers": {
                "get": {"summary": "The dispatchers registered in etcd.",
                    "responses": with(auth(), json!({"200": ok("The dispatchers, by name.", "DispatcherList"),
                        "503": error("etcd does not answer.")}))}},
            "/api/v1/alarms": {
                "get": {"summary": "A page of alarms, newest first, without their bodies.",
                    "parameters": [query("kind", "string", "Alarms of this kind (run_failed, ...)."),
                        query("status", "string", "Alarms with this status."),
                        query("job_id", "integer", "Alarms about this job."),
                        page, per_page],
                    "responses": with(auth(), json!({"200": ok("The page.", "AlarmPage")}))}},
            "/api/v1/events": {
                "get": {"summary": "A page of events, newest first.",
                    "parameters": [query("name", "string", "Events of this name."), page, per_page],
                    "responses": with(auth(), json!({"200": ok("The page.", "EventPage")}))},
                "post": {"summary": "Reports an event (a cron_event row): every enabled @event job subscribed to its name runs once.",
                    "requestBody": with(body("EventInput"), json!({"required": true})),
                    "responses": with(write(), json!({"201": ok("The event.", "Event"),
                        "200": ok("The event reported earlier with this dedup_key; nothing more fires.", "Event")}))}},
            "/api/v1/runs/{id}": {
                "parameters": [id()],
                "get": {"summary": "One run, every cron_run column.",
                    "responses": with(auth(), json!({"200": ok("The run.", "Run"),
                        "404": error("No such run.")}))}},
            "/api/v1/runs/{id}/output": {
                "parameters": [id()],
                "get": {"summary": "A run's output as plain text: the recorded tail (cron_run.output; \
                    empty while the run is going). With follow=true while the run is dispatched or \
                    running: a stream (chunked text/plain) of the output as it is produced, relayed \
                    from its executor, ending when the run ends; a gap the executor's tail dropped \
                    is a line `[... N bytes skipped ...]`, and a stream that cannot go on ends with \
                    a line `[gocron: why]`.",
                    "parameters": [query("follow", "boolean",
                        "Stream the output while the run is running (default false).")],
                    "responses": with(auth(), json!({
                        "200": {"description": "The output.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "404": error("No such run."),
                        "503": error("following: the monitor is not connected to Redis yet.")}))}},
            "/api/v1/audit": {
                "get": {"summary": "A page of the audit log, newest first.",
                    "parameters": [query("job_id", "integer", "Records about this job."),
                        page, per_page],
                    "responses": with(auth(), json!({"200": ok("The page.", "AuditPage")}))}},
            "/api/v1/rules/next": {
                "get": {"summary": "A rule's next fire times (what the console shows as a rule is typed).",
                    "parameters": [
                        {"name": "rule", "in": "query", "required": true, "schema": {"type": "string"}},
                        query("time_zone", "string", "An IANA zone; empty: [dispatcher] time_zone."),
                        query("count", "integer", "How many (default 5, at most 50).")],
                    "responses": with(auth(), json!({"200": ok("The next fire times.", "NextFires"),
                        "422": error("The rule or zone is not valid: the words last_error would hold.")}))}},
            "/api/v1/openapi.json": {
                "get": {"summary": "This document.", "security": [],
                    "responses": {"200": {"description": "The OpenAPI document."}}}},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_exactly_the_operations() {
        let spec = spec();
        let mut listed: Vec<(String, String)> = Vec::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    listed.push((method.clone(), path.clone()));
                }
            }
        }
        let mut expected: Vec<(String, String)> = OPERATIONS
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);
    }
}
