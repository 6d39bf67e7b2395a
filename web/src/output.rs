//! `GET /api/v1/runs/{id}/output`: a run's output as plain text; with `?follow=true`, while the
//! run is running, a stream of it as it is produced, ending when the run ends.
//!
//! The stream is plain chunked HTTP (`text/plain; charset=utf-8`), which every proxy passes:
//! no websocket, nothing the browser opens to an executor. The monitor reads the output from
//! the executor holding the run (found in the job's live hash, like a kill) with
//! [`ExecutorRpc::run_output`](gocron_shared::rpc::ExecutorRpc::run_output), a long-poll with
//! the `[rpc] secret`, one bounded chunk at a time, and relays each chunk as it comes: its
//! memory per follower is one chunk, whatever the size of the output; a slow client slows the
//! relay (the body is read only as fast as it is sent), and what the executor's tail dropped
//! meanwhile is said in a line, not silently lost.
//!
//! What the stream holds, in order: the output from its first byte (as much as the executor
//! still keeps: `[... N bytes skipped ...]` where it no longer does), then, when the run ended
//! before the stream could read its last bytes from the executor (it had left the executor),
//! what the recorded `cron_run.output` adds (see [`rest_of_recorded`]). When something prevents
//! the relay (the executor cannot be reached or refuses, Redis or the database does not answer),
//! the stream ends with one line `[gocron: ...]` saying why; it never just stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use gocron_shared::control::{self, ControlError};
use gocron_shared::entity::run;
use gocron_shared::job::RunStatus;
use gocron_shared::rpc::{self, ExecutorRpcClient, OutputRequest, Refused};
use sea_orm::EntityTrait as _;
use serde::Deserialize;

use crate::AppState;
use crate::auth::Reader;
use crate::error::ApiError;
use crate::extract::{Id, Query};

/// How long one call to the executor waits for new output.
pub const POLL_WAIT: Duration = Duration::from_secs(2);

/// Added to [`POLL_WAIT`] for a call's deadline (the network, a busy executor).
const CALL_MARGIN: Duration = Duration::from_secs(5);

/// How long connecting to an executor may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the run is looked at while it is on no executor (being handed over, or its
/// outcome being recorded).
const POLL: Duration = Duration::from_millis(250);

/// How long, once the executor said the job ended, the stream waits for the run's row to be
/// final before it ends anyway (saying so).
const RECORD_WAIT: Duration = Duration::from_secs(10);

/// The query of `GET /runs/{id}/output`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputQuery {
    /// Stream the output while the run is running.
    pub follow: Option<bool>,
}

/// `GET /api/v1/runs/{id}/output`: the recorded output (`cron_run.output`, empty while the run
/// is going); with `follow=true` and a run in flight (`dispatched` or `running`), the stream
/// described in [this module](self).
pub async fn output(
    State(state): State<AppState>,
    _: Reader,
    Id(id): Id,
    Query(query): Query<OutputQuery>,
) -> Result<Response, ApiError> {
    let row = run::Entity::find_by_id(id)
        .one(state.db())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))?;
    if !query.follow.unwrap_or(false) || is_final(&row) {
        return Ok(text(Body::from(row.output.unwrap_or_default())));
    }
    // Before the first byte: a monitor not connected to Redis yet is a 503, not a stream.
    state.cluster()?;
    let follow = Follow {
        state,
        run_id: id,
        job_id: row.job_id,
        offset: 0,
        sent: 0,
        whole: true,
        at_line_start: true,
        executor: None,
        ended_at: None,
        done: false,
    };
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let text = follow.next().await?;
        Some((Ok::<_, Infallible>(text), follow))
    });
    Ok(text(Body::from_stream(stream)))
}

/// A plain-text answer that no proxy or browser holds back or reinterprets.
fn text(body: Body) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied answers unless told not to; a live tail must not wait in a buffer.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Whether the run has its final status (its output is then the recorded one).
fn is_final(row: &run::Model) -> bool {
    !matches!(
        row.status.parse::<RunStatus>(),
        Ok(RunStatus::Dispatched | RunStatus::Running)
    )
}

/// What the recorded output adds to the `sent` bytes of text a follower already sent, `whole`
/// saying whether those were the output from its first byte without a gap.
///
/// The rule, simple and honest: the executor's chunks are the same text as the recorded output
/// (same bytes, same printable form, never split inside a character), so when what was sent is
/// the output from its start and the recorded output is whole too (it does not begin with the
/// tail's `[... N earlier bytes dropped ...]` line), the recorded output begins with what was
/// sent, and the rest is what it adds. Otherwise nothing tells where they overlap: the whole
/// recorded output follows, after a line saying so (some lines may then show twice).
pub fn rest_of_recorded(recorded: &str, sent: usize, whole: bool) -> String {
    let recorded_whole = !recorded.split_once('\n').is_some_and(|(first, _)| {
        first.starts_with("[... ") && first.ends_with(" earlier bytes dropped ...]")
    });
    if whole && recorded_whole && recorded.is_char_boundary(sent) {
        return recorded[sent..].to_owned();
    }
    if sent == 0 && whole {
        return recorded.to_owned();
    }
    format!(
        "[gocron: the run ended before its last output could be relayed; its recorded output (the tail the executor kept) follows]\n{recorded}"
    )
}

/// One follower's relay.
struct Follow {
    state: AppState,
    run_id: i64,
    job_id: i64,
    /// The next byte of the run's output to ask its executor for.
    offset: u64,
    /// Bytes of the run's output (as text) sent so far, notes not counted.
    sent: usize,
    /// Whether what was sent is the output from its first byte, without a gap.
    whole: bool,
    /// Whether the last byte sent ended a line (a note then starts on a line of its own).
    at_line_start: bool,
    /// The executor holding the run, once found: its label and a connection.
    executor: Option<(String, ExecutorRpcClient)>,
    /// When the executor said the job ended (the row's final status is then awaited).
    ended_at: Option<tokio::time::Instant>,
    done: bool,
}

/// What one step of a relay does.
enum Step {
    /// Sends this (perhaps nothing) and goes on.
    Send(String),
    /// Waits this long and goes on.
    Wait(Duration),
    /// Sends this and ends the stream.
    End(String),
}

impl Follow {
    /// The next piece of the stream; `None` once it has ended.
    async fn next(&mut self) -> Option<String> {
        loop {
            if self.done {
                return None;
            }
            let (text, end) = match self.step().await {
                Step::Send(text) => (text, false),
                Step::Wait(pause) => {
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Step::End(text) => (text, true),
            };
            self.done = end;
            if !text.is_empty() {
                self.at_line_start = text.ends_with('\n');
                return Some(text);
            }
        }
    }

    /// A line saying why the stream ends here.
    fn note(&self, why: impl std::fmt::Display) -> String {
        let lead = if self.at_line_start { "" } else { "\n" };
        format!("{lead}[gocron: {why}]\n")
    }

    async fn step(&mut self) -> Step {
        let cluster = match self.state.cluster() {
            Ok(cluster) => cluster.clone(),
            Err(e) => return Step::End(self.note(e)),
        };
        if let Some(ended_at) = self.ended_at {
            // The job ended and every byte was relayed: the stream ends when the run does.
            return match self.row().await {
                Err(step) => step,
                Ok(row) if is_final(&row) => Step::End(String::new()),
                Ok(_) if ended_at.elapsed() >= RECORD_WAIT => Step::End(self.note(format!(
                    "the job ended on its executor, but its outcome was not recorded within {} s; see GET /api/v1/runs/{}",
                    RECORD_WAIT.as_secs(),
                    self.run_id
                ))),
                Ok(_) => Step::Wait(POLL / 2),
            };
        }
        let Some((label, client)) = self.executor.clone() else {
            return match control::executor_of(&cluster.fences, self.job_id, self.run_id).await {
                Ok((label, address)) => {
                    match rpc::connect(address, CONNECT_TIMEOUT, &cluster.tls).await {
                        Ok(client) => {
                            self.executor = Some((label, client));
                            Step::Send(String::new())
                        }
                        Err(e) => Step::End(self.note(format!(
                            "executor {label} cannot be reached ({e}); the live output stops here"
                        ))),
                    }
                }
                // On no executor: being handed over, or its outcome just recorded.
                Err(ControlError::NotInFlight(_) | ControlError::InHandOff(..)) => {
                    self.off_executor().await
                }
                Err(e) => Step::End(self.note(format!("{e}; the live output stops here"))),
            };
        };
        let request = OutputRequest {
            secret: self.state.secret().clone(),
            run_id: self.run_id,
            offset: self.offset,
            wait_ms: POLL_WAIT.as_millis() as u64,
        };
        match client
            .run_output(rpc::context(POLL_WAIT + CALL_MARGIN), request)
            .await
        {
            Ok(Ok(chunk)) => {
                let mut text = String::new();
                if chunk.skipped > 0 {
                    // The executor's tail dropped them before they could be read.
                    self.whole = false;
                    text = format!(
                        "{}[... {} bytes skipped: the executor keeps only the tail of a run's output ...]\n",
                        if self.at_line_start { "" } else { "\n" },
                        chunk.skipped
                    );
                }
                self.offset = chunk.next;
                self.sent += chunk.text.len();
                text.push_str(&chunk.text);
                if chunk.ended {
                    self.ended_at = Some(tokio::time::Instant::now());
                }
                Step::Send(text)
            }
            // Not on it (yet, or any more): the row, or the live hash, tells where it is.
            Ok(Err(Refused::NotRunning(_))) => {
                self.executor = None;
                self.off_executor().await
            }
            Ok(Err(refused)) => Step::End(self.note(format!(
                "executor {label} refused to give the output: {refused}; the live output stops here"
            ))),
            Err(e) => Step::End(self.note(format!(
                "executor {label} cannot be reached ({e}); the live output stops here"
            ))),
        }
    }

    /// The run's row, or the step that ends the stream when it cannot be read.
    async fn row(&self) -> Result<run::Model, Step> {
        match run::Entity::find_by_id(self.run_id)
            .one(self.state.db())
            .await
        {
            Ok(Some(row)) => Ok(row),
            Ok(None) => Err(Step::End(
                self.note(format!("run {} was deleted", self.run_id)),
            )),
            Err(e) => Err(Step::End(self.note(format!(
                "the database does not answer ({e}); the live output stops here"
            )))),
        }
    }

    /// When the run is on no executor: the end of the stream if it is final (with what its
    /// recorded output adds), otherwise a short wait (it is being handed over, or recorded).
    async fn off_executor(&self) -> Step {
        match self.row().await {
            Err(step) => step,
            Ok(row) if is_final(&row) => Step::End(rest_of_recorded(
                row.output.as_deref().unwrap_or_default(),
                self.sent,
                self.whole,
            )),
            Ok(_) => Step::Wait(POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rest_of_recorded;

    #[test]
    fn the_recorded_output_adds_what_was_not_sent() {
        // Sent from the start: the rest only.
        assert_eq!(rest_of_recorded("one\ntwo\n", 4, true), "two\n");
        assert_eq!(rest_of_recorded("one\ntwo\n", 8, true), "");
        assert_eq!(rest_of_recorded("one\ntwo\n", 0, true), "one\ntwo\n");
        // The recorded output lost its beginning, or the stream had a gap: all of it, said so.
        let dropped = "[... 5 earlier bytes dropped ...]\ntwo\n";
        for (sent, whole) in [(4, true), (4, false)] {
            let rest = rest_of_recorded(dropped, sent, whole);
            assert!(rest.starts_with("[gocron: the run ended before"), "{rest}");
            assert!(rest.ends_with(dropped), "{rest}");
        }
        let rest = rest_of_recorded("one\ntwo\n", 4, false);
        assert!(rest.ends_with("]\none\ntwo\n"), "{rest}");
        // Nothing sent yet, a recorded output without its beginning: as recorded.
        assert_eq!(rest_of_recorded(dropped, 0, true), dropped);
        // Never a cut inside a character.
        let rest = rest_of_recorded("é\n", 1, true);
        assert!(rest.ends_with("]\né\n"), "{rest}");
    }
}
