//! The OpenAPI document served on `GET /openapi.json`, generated from the handlers'
//! annotations and the shared API types. Where the contract is silent, the choices made
//! here (status codes, error bodies) are written in the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stile central server",
        description = "Ticket validation: operator login, atomic redemption, QR issuance. Every error body is {\"code\", \"message\"}; messages are zh-CN unless Accept-Language starts with `en`. Bodies over 64 KiB answer 413, non-JSON bodies 415, unknown paths 404 and wrong methods 405, all with the same error body."
    ),
    paths(
        crate::http::login,
        crate::http::venue_scan,
        crate::http::qr_decrypt,
        crate::http::issue_qr,
        crate::http::published_keys,
        crate::http::healthz,
        crate::http::readyz,
        crate::http::metrics,
        crate::http::openapi,
        crate::http::admin_seed,
        crate::http::merchant_scan,
        crate::http::merchant_order,
        crate::http::merchant_redemptions,
        crate::http::merchant_redemptions_csv,
        crate::http::venue_scan_by_id,
        crate::http::device_keys,
        crate::http::device_tickets,
        crate::http::device_operators,
        crate::http::device_history,
        crate::http::device_decisions,
    ),
    components(schemas(
        stile_shared::api::ErrorBody,
        stile_shared::ApiCode,
        stile_shared::DecisionCode,
    )),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The token from POST /operators/login"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "device_credential",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("<device_id>:<secret>"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("STILE_ADMIN_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "channel_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A sales channel's API key"))
                    .build(),
            ),
        );
    }
}

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| serde_json::json!({}))
}
