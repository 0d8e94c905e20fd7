//! The one place where failures become HTTP answers.
//!
//! Every error body is the contract's `{"code", "message"}`. Handlers return [`AppError`];
//! its response carries the code and detail as an extension, and the [`localize`] middleware
//! writes the body in the language the request asked for. Database and internal failures
//! are logged with their context and answered with a generic `INTERNAL` body: no SQL, no
//! stack trace, no path ever reaches a client. A database that is away (unreachable, shut
//! down, a standby, too slow for the deadline) is `SERVICE_UNAVAILABLE` 503 with
//! `Retry-After: 1`: the client may retry, a gate decides offline.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use stile_shared::api::ErrorBody;
use stile_shared::{ApiCode, Lang};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed or invalid input; the text names the field.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("missing, invalid or expired credential")]
    Unauthorized,
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A request the HTTP layer refuses with its own status (408 too slow, 414 target too
    /// long, 431 headers too large), answered with the code `BAD_REQUEST`.
    #[error("{detail}")]
    Http { status: StatusCode, detail: String },
    /// Throttled or the queue is full; the client may retry after this many seconds.
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("scan_id reused for a different scan")]
    ScanIdReused,
    #[error("invalid QR token: {0}")]
    InvalidQr(String),
    #[error("token of another merchant")]
    WrongMerchant,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A database failure shared by every scan of a group-committed batch.
    #[error("database: {0}")]
    SharedDatabase(std::sync::Arc<sqlx::Error>),
    /// The database did not answer within the request's deadline.
    #[error("the database did not answer in time")]
    Unavailable,
    #[error("internal: {0}")]
    Internal(String),
}

impl AppError {
    /// For a database failure (one request's or a batch's): whether the database is away
    /// ([`crate::db::is_unavailable`]) rather than refusing.
    fn database_away(&self) -> Option<bool> {
        match self {
            AppError::Database(error) => Some(crate::db::is_unavailable(error)),
            AppError::SharedDatabase(error) => Some(crate::db::is_unavailable(error)),
            _ => None,
        }
    }

    pub fn code(&self) -> ApiCode {
        match self {
            AppError::BadRequest(_) | AppError::Http { .. } => ApiCode::BadRequest,
            AppError::Unauthorized => ApiCode::Unauthorized,
            AppError::InvalidCredentials => ApiCode::InvalidCredentials,
            AppError::Forbidden(_) => ApiCode::Forbidden,
            AppError::NotFound => ApiCode::NotFound,
            AppError::MethodNotAllowed => ApiCode::MethodNotAllowed,
            AppError::PayloadTooLarge => ApiCode::PayloadTooLarge,
            AppError::UnsupportedMediaType => ApiCode::UnsupportedMediaType,
            AppError::TooManyRequests { .. } => ApiCode::TooManyRequests,
            AppError::ScanIdReused => ApiCode::ScanIdReused,
            AppError::InvalidQr(_) => ApiCode::InvalidQr,
            AppError::WrongMerchant => ApiCode::WrongMerchant,
            AppError::Unavailable => ApiCode::ServiceUnavailable,
            AppError::Database(_) | AppError::SharedDatabase(_) => match self.database_away() {
                Some(true) => ApiCode::ServiceUnavailable,
                _ => ApiCode::Internal,
            },
            AppError::Internal(_) => ApiCode::Internal,
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            AppError::Http { status, .. } => *status,
            _ => status_of(self.code()),
        }
    }
}

/// The HTTP status of a code, as the contract's tables say.
pub fn status_of(code: ApiCode) -> StatusCode {
    match code {
        ApiCode::Success => StatusCode::OK,
        ApiCode::AlreadyRedeemed
        | ApiCode::NotEntitled
        | ApiCode::Exhausted
        | ApiCode::QrExpired
        | ApiCode::QrSuperseded
        | ApiCode::TicketNotActive
        | ApiCode::TicketVoid
        | ApiCode::OfflineUnverifiable
        | ApiCode::ImpossibleTime
        | ApiCode::NotYetValid
        | ApiCode::NoLongerValid
        | ApiCode::OutsideHours
        | ApiCode::DailyLimit
        | ApiCode::TooSoon
        | ApiCode::VenueFull
        | ApiCode::NotInside
        | ApiCode::StoreFailed => StatusCode::CONFLICT,
        ApiCode::InvalidQr | ApiCode::BadRequest => StatusCode::BAD_REQUEST,
        ApiCode::WrongMerchant | ApiCode::Forbidden => StatusCode::FORBIDDEN,
        ApiCode::Unauthorized | ApiCode::InvalidCredentials => StatusCode::UNAUTHORIZED,
        ApiCode::NotFound => StatusCode::NOT_FOUND,
        ApiCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ApiCode::ScanIdReused => StatusCode::UNPROCESSABLE_ENTITY,
        ApiCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ApiCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ApiCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ApiCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ApiCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// What the [`localize`] middleware needs to write an error body.
#[derive(Debug, Clone)]
struct PendingErrorBody {
    code: ApiCode,
    /// Shown to the client after the code's message (e.g. the offending field).
    detail: Option<String>,
    /// `Retry-After`, in seconds.
    retry_after: Option<u64>,
    /// The status, when it is not the code's own.
    status: Option<StatusCode>,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let detail = match &self {
            AppError::BadRequest(detail) | AppError::Http { detail, .. } => Some(detail.clone()),
            AppError::Database(_) | AppError::SharedDatabase(_) => {
                if self.database_away() == Some(true) {
                    tracing::warn!(error = %self, "database unavailable: answered 503");
                } else {
                    tracing::error!(error = %self, "database failure answered with 500");
                }
                None
            }
            AppError::Unavailable => {
                tracing::warn!("the database did not answer within the deadline: answered 503");
                None
            }
            AppError::Internal(error) => {
                tracing::error!(error = %error, "internal failure answered with 500");
                None
            }
            _ => None,
        };
        let code = self.code();
        let retry_after = match &self {
            AppError::TooManyRequests { retry_after_secs } => Some(*retry_after_secs),
            _ if code == ApiCode::ServiceUnavailable => Some(1),
            _ => None,
        };
        let status = match &self {
            AppError::Http { status, .. } => Some(*status),
            _ => None,
        };
        let pending = PendingErrorBody {
            code,
            detail,
            retry_after,
            status,
        };
        let mut response = error_body(&pending, Lang::ZhCn);
        response.extensions_mut().insert(pending);
        response
    }
}

fn error_body(pending: &PendingErrorBody, lang: Lang) -> Response {
    let code = pending.code;
    let message = match &pending.detail {
        Some(detail) => format!("{}: {detail}", code.message(lang)),
        None => code.message(lang).to_owned(),
    };
    let status = pending.status.unwrap_or_else(|| status_of(code));
    let mut response = (status, axum::Json(ErrorBody { code, message })).into_response();
    if let Some(secs) = pending.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The request's language, from `Accept-Language`.
#[derive(Debug, Clone, Copy)]
pub struct RequestLang(pub Lang);

impl<S: Send + Sync> FromRequestParts<S> for RequestLang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestLang(lang_of(&parts.headers)))
    }
}

fn lang_of(headers: &axum::http::HeaderMap) -> Lang {
    Lang::from_accept_language(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|value| value.to_str().ok()),
    )
}

/// Middleware: rewrites error bodies in the request's language, and turns the framework's
/// own plain-text refusals (405 and friends) into the contract's error body.
pub async fn localize(request: Request, next: Next) -> Response {
    let lang = lang_of(request.headers());
    let response = next.run(request).await;
    if let Some(pending) = response.extensions().get::<PendingErrorBody>().cloned() {
        if lang == Lang::ZhCn {
            return response;
        }
        return error_body(&pending, lang);
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    let status = response.status();
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let code = match status {
            StatusCode::NOT_FOUND => ApiCode::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiCode::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiCode::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiCode::UnsupportedMediaType,
            StatusCode::UNAUTHORIZED => ApiCode::Unauthorized,
            StatusCode::FORBIDDEN => ApiCode::Forbidden,
            StatusCode::TOO_MANY_REQUESTS => ApiCode::TooManyRequests,
            status if status.is_client_error() => ApiCode::BadRequest,
            _ => ApiCode::Internal,
        };
        let allow = response.headers().get(header::ALLOW).cloned();
        let mut rewritten = error_body(
            &PendingErrorBody {
                code,
                detail: None,
                retry_after: None,
                status: Some(status),
            },
            lang,
        );
        if let Some(allow) = allow {
            rewritten.headers_mut().insert(header::ALLOW, allow);
        }
        return rewritten;
    }
    response
}

/// A JSON response with `Cache-Control: no-store` (decisions and credentials must not be
/// cached by proxies).
pub fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
