//! The API's one error type: each variant is a status code, and every error leaves as JSON
//! `{"error": "..."}`.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Occurs when a request cannot be answered as asked; the status code says why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Occurs when the request has no token, or one that is not configured (401).
    #[error("a valid token is required: Authorization: Bearer <token>")]
    Unauthorized,
    /// Occurs when a viewer asks for a change (403).
    #[error("this token may only read")]
    Forbidden,
    /// Occurs when the client's address sent a wrong token less than a second ago (429).
    #[error("a wrong token was sent from this address less than a second ago: wait, then retry")]
    TooManyGuesses,
    /// Occurs when a change made with a console session lacks the session's CSRF token (403).
    #[error("a change made with a session must carry its CSRF token (X-CSRF-Token)")]
    Csrf,
    /// Occurs when the job, run or route does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Occurs when the request is malformed: a bad parameter or body (400, or the status the
    /// extractor chose).
    #[error("{message}")]
    BadRequest {
        /// 400, 415 or 422 as the extractor found.
        status: StatusCode,
        /// What is wrong.
        message: String,
    },
    /// Occurs when a job would not be scheduled: the words `last_error` would hold (422).
    #[error("{0}")]
    Invalid(String),
    /// Occurs when the request conflicts with the state of the job or run: a disabled job run
    /// now, a finished run killed (409).
    #[error("{0}")]
    Conflict(String),
    /// Occurs when the database, etcd or Redis does not answer (503).
    #[error("{0}")]
    Unavailable(String),
    /// Occurs when an executor cannot be reached or refuses what it was asked (502).
    #[error("{0}")]
    BadGateway(String),
    /// Occurs when no dispatcher took a run-now request in time (504).
    #[error("{0}")]
    Timeout(String),
    /// Occurs when a database statement fails (500); the details are logged, not returned.
    #[error("database error")]
    Database(#[from] sea_orm::DbErr),
}

impl ApiError {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// The status code it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::Csrf => StatusCode::FORBIDDEN,
            ApiError::TooManyGuesses => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest { status, .. } => *status,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Database(e) = &self {
            tracing::error!(error = %e, "HTTP API: database statement failed");
        }
        let body = Json(serde_json::json!({"error": self.to_string()}));
        let mut response = (self.status(), body).into_response();
        if let ApiError::TooManyGuesses = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if let ApiError::Unauthorized = self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
