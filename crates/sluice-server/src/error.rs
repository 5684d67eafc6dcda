//! The one JSON error shape of the API and the webhooks:
//! `{"code": "...", "message": "...", "details": {...}}`, never internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_engine::EngineError;
use sluice_store::StoreError;

/// An answer that is an error.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code such as `not_found`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// More, as data (`{}` when nothing).
    pub details: Value,
    /// Seconds after which the client may try again (`Retry-After`).
    pub retry_after: Option<u16>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    /// The same error with details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 503 when as many runs as the server takes are under way.
    pub fn overloaded(in_flight: usize) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "{in_flight} runs are under way, as many as this server takes (`--max-runs-in-flight`); try again shortly"
            ),
        );
        e.retry_after = Some(1);
        e
    }

    /// 404 for something that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 for a flow turned off with `enabled: false`.
    pub fn flow_disabled(id: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "flow_disabled",
            format!("flow `{id}` is disabled (`enabled: false` in its file); no run was started"),
        )
        .with_details(json!({"flow": id}))
    }

    /// 400 for a request that is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The client did not send its body within the time allowed.
    pub fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ),
        )
        .with_details(serde_json::json!({"timeoutSecs": timeout.as_secs_f64()}))
    }

    /// The store failed: the caller can only retry; the cause goes to the log.
    pub fn store(e: &StoreError) -> Self {
        sluice_action::warn!("sluice: {e}");
        if matches!(e, StoreError::Full(_)) {
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "store_full",
                "the run store is full; nothing was recorded; try again once its operator has freed space",
            );
        }
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the run store failed; try again",
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(StoreError::NoSuchRun(id)) => {
                Self::not_found(format!("no run `{id}`"))
            }
            EngineError::Store(e @ StoreError::NotResumable { .. })
            | EngineError::Store(e @ StoreError::NotCancellable { .. }) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            EngineError::Store(e) => Self::store(&e),
            e @ (EngineError::WrongFlow { .. }
            | EngineError::NoSuchStep { .. }
            | EngineError::NotRunning { .. }) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            EngineError::NotStarted(m) => {
                sluice_action::warn!("sluice: a run did not start: {m}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the run could not be recorded; try again",
                )
            }
            e @ EngineError::Commit { .. } => {
                sluice_action::warn!("sluice: {e}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the run's database did not answer whether its transaction committed; try again",
                )
            }
            EngineError::Event(m) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "event_mismatch",
                format!("the event does not fit the trigger: {m}"),
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("sluice_error_answers_total", "code" => self.code).increment(1);
        let body = json!({"code": self.code, "message": self.message, "details": self.details});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        r
    }
}
