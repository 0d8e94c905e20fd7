//! The merchant console: scans, the order view and the reconciliation log (JSON and CSV).

use super::{identifier, JsonBody};
use crate::auth::AuthenticatedOperator;
use crate::error::{no_store, AppError, RequestLang};
use crate::openapi::MerchantAnswerOrError;
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use stile_shared::api::{
    ErrorBody, MerchantScanRequest, MerchantScanResponse, OccupancyReport, OrderView,
    RedemptionPage,
};
use stile_shared::Identifier;

/// Scan a QR token or an order code from the merchant console and redeem.
#[utoipa::path(post, path = "/merchant/tickets/scan", tag = "merchant",
    request_body = MerchantScanRequest,
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "`success`: every selected ticket redeemed; `partial`: some, each ticket says why not", body = MerchantScanResponse),
        (status = 400, description = "INVALID_QR (`result: reject`), or BAD_REQUEST for a malformed body (an error body)", body = MerchantAnswerOrError),
        (status = 401, description = "UNAUTHORIZED: missing, invalid or expired operator token", body = ErrorBody),
        (status = 403, description = "WRONG_MERCHANT: another merchant's ticket or order (no data about it); FORBIDDEN: location_id is not the merchant's", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no order with this code", body = ErrorBody),
        (status = 409, description = "Nothing redeemable: `{code, message, result: reject, tickets}`; a repeated scan says ALREADY_REDEEMED or EXHAUSTED per ticket and writes no log row", body = MerchantScanResponse),
    ))]
pub async fn merchant_scan(
    State(state): State<AppState>,
    RequestLang(lang): RequestLang,
    operator: AuthenticatedOperator,
    JsonBody(request): JsonBody<MerchantScanRequest>,
) -> Result<Response, AppError> {
    let answer = crate::merchant::scan(&state, &operator, &request, lang).await?;
    Ok(no_store((answer.status, Json(answer.body)).into_response()))
}

/// An order's entitlements, grouped by passenger.
#[utoipa::path(get, path = "/merchant/orders/{orderId}", tag = "merchant",
    params(("orderId" = Identifier, Path, description = "The order's code (the card's name for it)")),
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "Entitlements by passenger with remaining uses and the last redemption of each", body = OrderView),
        (status = 400, description = "BAD_REQUEST: orderId is not 1 to 64 of A-Z, a-z, 0-9, - and _", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such order for this merchant (another merchant's order answers the same)", body = ErrorBody),
    ))]
pub async fn merchant_order(
    State(state): State<AppState>,
    operator: AuthenticatedOperator,
    Path(order_id): Path<String>,
) -> Result<Response, AppError> {
    let order_id = identifier("orderId", &order_id)?;
    let view = crate::merchant::order_view(&state, &operator, order_id.as_str()).await?;
    Ok(no_store(Json(view).into_response()))
}

fn redemption_query(
    query: Result<Query<crate::merchant::RedemptionQuery>, QueryRejection>,
) -> Result<crate::merchant::RedemptionQuery, AppError> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| AppError::BadRequest(rejection.body_text()))
}

/// The merchant's redemption log for one day, newest first, keyset-paged.
#[utoipa::path(get, path = "/merchant/redemptions", tag = "merchant",
    params(
        ("date" = Option<String>, Query, format = Date, description = "YYYY-MM-DD in the merchant's time zone; default today there"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1 to 200, default 50"),
    ),
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "One page; `next_cursor` is null on the last. Stable and gap-free while new redemptions arrive (they are newer than every page)", body = RedemptionPage),
        (status = 400, description = "BAD_REQUEST: bad date or limit, or a cursor that is tampered, another merchant's or another day's", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
    ))]
pub async fn merchant_redemptions(
    State(state): State<AppState>,
    operator: AuthenticatedOperator,
    query: Result<Query<crate::merchant::RedemptionQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let query = redemption_query(query)?;
    let request = crate::merchant::page_request(&state, &operator, &query).await?;
    let page = crate::merchant::redemptions(&state, &operator, &request).await?;
    Ok(no_store(Json(page).into_response()))
}

/// `GET /merchant/occupancy`'s query.
#[derive(Debug, serde::Deserialize)]
pub struct OccupancyQuery {
    pub date: Option<String>,
    pub venue: Option<String>,
}

/// Occupancy of the merchant's venues: inside now, capacity, the day's entries and exits,
/// and the day in five-minute steps.
#[utoipa::path(get, path = "/merchant/occupancy", tag = "merchant",
    params(
        ("date" = Option<String>, Query, format = Date, description = "YYYY-MM-DD in the merchant's time zone; default today there"),
        ("venue" = Option<String>, Query, description = "One venue's code; default every venue of the merchant"),
    ),
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "Every venue of the merchant (or the one asked for), by code; `inside` is the count entries are decided against today, and the end of the day for another date", body = OccupancyReport),
        (status = 400, description = "BAD_REQUEST: bad date", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such venue of this merchant", body = ErrorBody),
    ))]
pub async fn merchant_occupancy(
    State(state): State<AppState>,
    operator: AuthenticatedOperator,
    query: Result<Query<OccupancyQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|rejection| AppError::BadRequest(rejection.body_text()))?;
    let date = crate::params::date(query.date.as_deref()).map_err(AppError::BadRequest)?;
    let venues = crate::occupancy::report(
        &state.pool,
        crate::occupancy::Venues::OfMerchant {
            merchant_id: operator.merchant_id,
            code: query.venue.as_deref(),
        },
        date,
    )
    .await?;
    if query.venue.is_some() && venues.is_empty() {
        return Err(AppError::NotFound);
    }
    Ok(no_store(
        Json(stile_shared::api::OccupancyReport { venues }).into_response(),
    ))
}

/// The same day's log as CSV, streamed.
#[utoipa::path(get, path = "/merchant/redemptions.csv", tag = "merchant",
    params(("date" = Option<String>, Query, format = Date, description = "YYYY-MM-DD in the merchant's time zone; default today there")),
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "CSV with a header row; the same rows as the JSON pages, newest first", content_type = "text/csv"),
        (status = 400, description = "BAD_REQUEST: bad date", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
    ))]
pub async fn merchant_redemptions_csv(
    State(state): State<AppState>,
    operator: AuthenticatedOperator,
    query: Result<Query<crate::merchant::RedemptionQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let mut query = redemption_query(query)?;
    query.cursor = None;
    query.limit = None;
    let request = crate::merchant::page_request(&state, &operator, &query).await?;
    let filename = format!(
        "redemptions-{}-{}.csv",
        operator.merchant_code, request.date
    );
    let (lines, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(crate::merchant::stream_csv(state, operator, request, lines));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(no_store(response))
}
