//! The HTTP API of `firestream run` (DESIGN §8), on axum: liveness, readiness, Prometheus
//! metrics, stream status and control. Errors are JSON `{error, detail}`; mutating endpoints
//! need the bearer token when `api.token` is set. The handlers are thin: [`Control`] does
//! the work, [`Metrics`] renders the scrape.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::alert::{AlertError, AlertIntake, AlertRequest};
use crate::control::{Control, ControlError};
use crate::metrics::{Format, Metrics};
use crate::secret::Secret;
use crate::sinks::Sink;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub control: Arc<Control>,
    pub sink: Arc<dyn Sink>,
    pub token: Option<Secret>,
    /// The largest body `POST /api/v1/ingest` reads.
    pub max_body: usize,
    pub alerts: AlertIntake,
    /// [`crate::config::Config::shown`], computed once.
    pub config: Arc<Value>,
    pub metrics: Arc<Metrics>,
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.error, "detail": self.detail})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let (status, error) = match &e {
            ControlError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ControlError::AlreadyRunning(_) => (StatusCode::CONFLICT, "already_running"),
            ControlError::NotRunning(_) => (StatusCode::CONFLICT, "not_running"),
            ControlError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ControlError::CannotStart { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "cannot_start"),
            ControlError::NotRecovered(..) => (StatusCode::SERVICE_UNAVAILABLE, "recovering"),
            ControlError::PushCut { .. } => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        ApiError::new(status, error, e.to_string())
    }
}

/// The OpenAPI document of this API, served at `/api/v1/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../docs/openapi.yaml");

/// Every route: method, path, and whether it changes something (then the token applies).
/// The OpenAPI document lists exactly these (a test holds them together).
pub const ROUTES: [(&str, &str, bool); 13] = [
    ("GET", "/health", false),
    ("GET", "/ready", false),
    ("GET", "/metrics", false),
    ("GET", "/api/v1/openapi.yaml", false),
    ("GET", "/api/v1/config", false),
    ("GET", "/api/v1/streams", false),
    ("GET", "/api/v1/streams/{id}", false),
    ("POST", "/api/v1/streams/{id}/start", true),
    ("POST", "/api/v1/streams/{id}/stop", true),
    ("POST", "/api/v1/streams/start-all", true),
    ("POST", "/api/v1/streams/stop-all", true),
    ("POST", "/api/v1/ingest", true),
    ("POST", "/api/v1/alerts", true),
];

/// The handler of a route in [`ROUTES`].
fn handler(method: &str, path: &str) -> axum::routing::MethodRouter<ApiState> {
    match (method, path) {
        ("GET", "/health") => get(health),
        ("GET", "/ready") => get(ready),
        ("GET", "/metrics") => get(metrics),
        ("GET", "/api/v1/openapi.yaml") => get(openapi),
        ("GET", "/api/v1/config") => get(config),
        ("GET", "/api/v1/streams") => get(streams),
        ("GET", "/api/v1/streams/{id}") => get(stream),
        ("POST", "/api/v1/streams/{id}/start") => post(start),
        ("POST", "/api/v1/streams/{id}/stop") => post(stop),
        ("POST", "/api/v1/streams/start-all") => post(start_all),
        ("POST", "/api/v1/streams/stop-all") => post(stop_all),
        ("POST", "/api/v1/ingest") => post(ingest),
        ("POST", "/api/v1/alerts") => post(alert),
        _ => unreachable!("{method} {path} is in ROUTES without a handler"),
    }
}

/// Every route of [`ROUTES`]. Mutating ones sit behind the token check.
pub fn router(state: ApiState) -> Router {
    let (mut open, mut mutating) = (Router::new(), Router::new());
    for (method, path, changes) in ROUTES {
        if changes {
            mutating = mutating.route(path, handler(method, path));
        } else {
            open = open.route(path, handler(method, path));
        }
    }
    let mutating = mutating.route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    open.merge(mutating)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        OPENAPI,
    )
        .into_response()
}

/// Serves `router` on `listener` (plain TCP, or [`crate::api_tls::TlsListener`]) until
/// `stop` fires.
pub async fn serve<L>(listener: L, state: ApiState, stop: CancellationToken) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn authorize(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = state.token.as_ref().filter(|t| !t.is_empty()) else {
        return Ok(next.run(request).await);
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match given {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <token>` (the api.token of the config)",
        )),
        Some(given) if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) => {
            Ok(next.run(request).await)
        }
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the bearer token is not the api.token of the config",
        )),
    }
}

/// Compares without stopping at the first difference, so response times do not reveal how
/// much of a guessed token is right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 once the sink can deliver; 503 with the reasons otherwise.
async fn ready(State(state): State<ApiState>) -> Response {
    let sink = state.sink.readiness();
    if sink.ready {
        (StatusCode::OK, Json(json!({"ready": true, "reasons": []}))).into_response()
    } else {
        let reason = format!("sink {}: {}", state.sink.name(), sink.detail);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reasons": [reason]})),
        )
            .into_response()
    }
}

async fn config(State(state): State<ApiState>) -> Json<Value> {
    Json(state.config.as_ref().clone())
}

/// The Prometheus scrape: OpenMetrics when the scraper asks for it, else the 0.0.4 text
/// format. Not behind the token, as scrapers are configured without one.
async fn metrics(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let page = state.metrics.render(format).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics_failed",
            "the metrics page could not be written (a bug: please report it with the log)",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        page,
    )
        .into_response())
}

async fn streams(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({"streams": state.control.views()}))
}

async fn stream(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.control.view(&id)?)))
}

async fn start(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.control.start(&id)?;
    Ok(Json(json!(state.control.view(&id)?)))
}

async fn stop(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.control.stop(&id).await?;
    Ok(Json(json!(state.control.view(&id)?)))
}

async fn start_all(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let started = state.control.start_all()?;
    Ok(Json(json!({"started": started})))
}

async fn stop_all(State(state): State<ApiState>) -> Json<Value> {
    let stopped = state.control.stop_all().await;
    Json(json!({"stopped": stopped}))
}

#[derive(serde::Deserialize)]
struct IngestParams {
    source: Option<String>,
}

/// A body in the named source's own format (FIRMS CSV, NWS JSON, an `http` source's JSON or
/// CSV, …), through the same validation, dedupe, queue and DLQ as a poll. 200 with the
/// per-row outcome; 422 when the body as a whole is not that format.
async fn ingest(
    State(state): State<ApiState>,
    Query(params): Query<IngestParams>,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(source) = params.source else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name the source whose format the body is in: POST /api/v1/ingest?source=<stream id>",
        ));
    };
    // Unknown sources are refused before the body is read.
    state.control.view(&source)?;
    let limit = state.max_body;
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the body is larger than api.max_body ({limit} bytes); split it, or raise api.max_body"
            ),
        )
    })?;
    let report = state.control.push(&source, body).await?;
    let status = if report.rejected.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(report))).into_response())
}

/// The largest manual alert read.
const MAX_ALERT_BODY: usize = 64 * 1024;

/// A manual alert, queued ahead of everything else: 202 with its id (200 when the same
/// `id` was sent before), 400 with what is wrong.
async fn alert(State(state): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let invalid = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_alert", detail);
    let body = axum::body::to_bytes(body, MAX_ALERT_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("an alert is at most {MAX_ALERT_BODY} bytes"),
            )
        })?;
    let request: AlertRequest = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "{e}; send JSON like {{\"headline\": \"Evacuate zone 4 now\", \"severity\": \"Extreme\"}}"
        ))
    })?;
    match state.alerts.submit(request).await {
        Ok(accepted) => {
            let status = if accepted.duplicate {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok((status, Json(json!(accepted))).into_response())
        }
        Err(AlertError::Invalid(detail)) => Err(invalid(detail)),
        Err(e @ AlertError::Closed) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            e.to_string(),
        )),
        Err(e @ AlertError::Recovering) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "recovering",
            e.to_string(),
        )),
    }
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not served for {}; see /api/v1/openapi.yaml",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes_served() {
        let doc: yaml_serde::Value = yaml_serde::from_str(OPENAPI).unwrap();
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_mapping()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                let path = path.as_str().unwrap().to_owned();
                item.as_mapping()
                    .unwrap()
                    .keys()
                    .filter_map(|m| m.as_str())
                    .filter(|m| ["get", "post", "put", "delete", "patch"].contains(m))
                    .map(move |m| (m.to_ascii_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
        // Mutating routes, and only they, need the token in the document too.
        for (method, path, changes) in ROUTES {
            let op = &doc["paths"][path][method.to_ascii_lowercase().as_str()];
            assert_eq!(op.get("security").is_some(), changes, "{method} {path}");
        }
    }
}
