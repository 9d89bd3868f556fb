//! Why a fetch failed, classified so operators can tell an expired key from an outage page
//! from a format change, and so the stream knows whether to retry, trip its breaker or pause.

use std::time::Duration;

use crate::sources::PayloadError;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: no response within {}s", after.as_secs_f64())]
    Timeout { url: String, after: Duration },
    #[error("{url}: cannot connect: {detail}")]
    Connect { url: String, detail: String },
    #[error("{url}: HTTP {status}{}; it begins: {excerpt:?}", describe(*status))]
    Status {
        url: String,
        status: u16,
        excerpt: String,
    },
    #[error(
        "{url}: upstream problem {problem_type} (HTTP {status}): {title}; it begins: {excerpt:?}"
    )]
    Problem {
        url: String,
        status: u16,
        problem_type: String,
        title: String,
        excerpt: String,
    },
    #[error("{url}: response larger than the {limit}-byte limit (`max_body`)")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: response cut off after {received} bytes: {detail}; it begins: {excerpt:?}")]
    Truncated {
        url: String,
        received: usize,
        detail: String,
        excerpt: String,
    },
    #[error("{url}: {source}")]
    Content { url: String, source: PayloadError },
    #[error(
        "{host}: request budget of {requests} per {window} used up; the next request is allowed in {}s",
        resets_in.as_secs()
    )]
    BudgetExhausted {
        host: String,
        requests: u32,
        window: String,
        resets_in: Duration,
    },
    #[error("{url}: {detail}")]
    Request { url: String, detail: String },
}

fn describe(status: u16) -> &'static str {
    match status {
        400 => " Bad Request (check the source's parameters)",
        401 => " Unauthorized (check the API key)",
        402 => " Payment Required (the account has no points or credit left)",
        403 => " Forbidden (check the API key, and the User-Agent for NWS)",
        404 => " Not Found (check the URL, product or station)",
        300..=399 => " redirect to another host, not followed (point `url` at the new address)",
        429 => " Too Many Requests",
        500..=599 => " (upstream server error)",
        _ => "",
    }
}

impl FetchError {
    /// The DLQ `error_kind` and log field.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout { .. } => "timeout",
            FetchError::Connect { .. } => "connect",
            FetchError::Status { status: 402, .. } => "payment_required",
            FetchError::Status {
                status: 401 | 403, ..
            } => "unauthorized",
            FetchError::Status { status: 429, .. } => "rate_limited",
            FetchError::Status {
                status: 500..=599, ..
            } => "server_error",
            FetchError::Status {
                status: 300..=399, ..
            } => "redirect_refused",
            FetchError::Status { .. } => "client_error",
            FetchError::Problem { .. } => "upstream_problem",
            FetchError::TooLarge { .. } => "payload_too_large",
            FetchError::Truncated { .. } => "truncated_body",
            FetchError::Content { source, .. } => source.kind(),
            FetchError::BudgetExhausted { .. } => "budget_exhausted",
            FetchError::Request { .. } => "request_error",
        }
    }

    /// Whether another attempt within this poll can help.
    pub fn is_retriable(&self) -> bool {
        match self {
            FetchError::Timeout { .. } | FetchError::Connect { .. } => true,
            FetchError::Truncated { .. } => true,
            FetchError::Status { status, .. } => *status == 429 || *status >= 500,
            FetchError::Problem { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// An upstream that answered with something unusable, or refused the request as we
    /// made it (4xx): worth a DLQ record (`stage: fetch`) with the excerpt. An outage (5xx,
    /// 429, unreachable) and our own budget are not bad input: they show in the status.
    pub fn is_bad_payload(&self) -> bool {
        match self {
            FetchError::Status { status, .. } | FetchError::Problem { status, .. } => {
                (400..500).contains(status) && *status != 429
            }
            FetchError::TooLarge { .. }
            | FetchError::Truncated { .. }
            | FetchError::Content { .. } => true,
            _ => false,
        }
    }

    /// Counts against the circuit breaker: upstream is failing. Our own budget and a
    /// refused payment are not upstream failures.
    pub fn trips_breaker(&self) -> bool {
        !matches!(
            self,
            FetchError::BudgetExhausted { .. } | FetchError::Status { status: 402, .. }
        )
    }

    /// The first bytes of the response, when there was one.
    pub fn excerpt(&self) -> Option<&str> {
        match self {
            FetchError::Status { excerpt, .. }
            | FetchError::Problem { excerpt, .. }
            | FetchError::Truncated { excerpt, .. } => Some(excerpt),
            FetchError::Content { source, .. } => source.excerpt(),
            _ => None,
        }
    }
}
