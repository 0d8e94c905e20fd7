//! Decision and error codes of the external contract, with their zh-CN and English messages.
//!
//! The wire names and the zh-CN texts are part of the contract (`contract.md`, "Decision
//! codes"): gate staff read them, tests compare them byte for byte. Change them only with
//! the contract.

use serde::{Deserialize, Serialize};

/// The language of a message: zh-CN unless the client's first `Accept-Language` tag is `en*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    ZhCn,
    En,
}

impl Lang {
    /// Reads an `Accept-Language` header value: only its first tag counts.
    pub fn from_accept_language(header: Option<&str>) -> Lang {
        let first = header
            .and_then(|value| value.split(',').next())
            .map(|tag| tag.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if first.starts_with("en") {
            Lang::En
        } else {
            Lang::ZhCn
        }
    }
}

macro_rules! codes {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $wire:literal, $zh:literal, $en:literal;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $wire)] $variant,)*
        }

        /// The schema lists the wire names (`ALREADY_REDEEMED`), exactly what is sent.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($wire,)*]))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The wire name, e.g. `"ALREADY_REDEEMED"`.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)* }
            }

            /// The message shown to people, in the requested language.
            pub fn message(self, lang: Lang) -> &'static str {
                match (self, lang) {
                    $(($name::$variant, Lang::ZhCn) => $zh,
                      ($name::$variant, Lang::En) => $en,)*
                }
            }

            /// Parses a wire name.
            pub fn parse(wire: &str) -> Option<$name> {
                match wire { $($wire => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

codes! {
    /// The outcome of a scan, online or offline.
    DecisionCode {
        Success = "SUCCESS", "核销成功", "Redeemed";
        AlreadyRedeemed = "ALREADY_REDEEMED", "该权益已核销", "This entitlement has already been redeemed";
        NotEntitled = "NOT_ENTITLED", "票券不包含此权益", "The ticket does not include this entitlement";
        Exhausted = "EXHAUSTED", "该权益已用完", "This entitlement has no uses left";
        QrExpired = "QR_EXPIRED", "二维码已过期，请刷新", "QR code expired, please refresh";
        QrSuperseded = "QR_SUPERSEDED", "二维码已失效，请使用最新二维码", "QR code superseded, please use the latest QR code";
        TicketNotActive = "TICKET_NOT_ACTIVE", "票券未激活", "Ticket not activated";
        TicketVoid = "TICKET_VOID", "票券已作废", "Ticket has been voided";
        InvalidQr = "INVALID_QR", "无效二维码", "Invalid QR code";
        WrongMerchant = "WRONG_MERCHANT", "无权核销该票券", "Not allowed to redeem this ticket";
        OfflineUnverifiable = "OFFLINE_UNVERIFIABLE", "网络异常，无法离线核验，请稍后重试", "Network problem: cannot verify offline, please retry later";
        ImpossibleTime = "IMPOSSIBLE_TIME", "离线核验时间不可信，已记录待对账", "Offline decision time is impossible: recorded for reconciliation";
        NotYetValid = "NOT_YET_VALID", "未到可用时间", "Not valid yet";
        NoLongerValid = "NO_LONGER_VALID", "已过有效期", "No longer valid";
        OutsideHours = "OUTSIDE_HOURS", "不在可用时段", "Outside the hours of use";
        DailyLimit = "DAILY_LIMIT", "今日次数已用完", "No uses left today";
        TooSoon = "TOO_SOON", "刚刚已核销，请稍后再试", "Used just now, please try again later";
        VenueFull = "VENUE_FULL", "场馆已满，请稍候", "The venue is full, please wait";
        NotInside = "NOT_INSIDE", "未入场，无法离场", "Not inside: cannot exit";
    }
}

codes! {
    /// Every code an error body (or a decision body) can carry: `{"code", "message", ...}`.
    ApiCode {
        Success = "SUCCESS", "核销成功", "Redeemed";
        AlreadyRedeemed = "ALREADY_REDEEMED", "该权益已核销", "This entitlement has already been redeemed";
        NotEntitled = "NOT_ENTITLED", "票券不包含此权益", "The ticket does not include this entitlement";
        Exhausted = "EXHAUSTED", "该权益已用完", "This entitlement has no uses left";
        QrExpired = "QR_EXPIRED", "二维码已过期，请刷新", "QR code expired, please refresh";
        QrSuperseded = "QR_SUPERSEDED", "二维码已失效，请使用最新二维码", "QR code superseded, please use the latest QR code";
        TicketNotActive = "TICKET_NOT_ACTIVE", "票券未激活", "Ticket not activated";
        TicketVoid = "TICKET_VOID", "票券已作废", "Ticket has been voided";
        InvalidQr = "INVALID_QR", "无效二维码", "Invalid QR code";
        WrongMerchant = "WRONG_MERCHANT", "无权核销该票券", "Not allowed to redeem this ticket";
        OfflineUnverifiable = "OFFLINE_UNVERIFIABLE", "网络异常，无法离线核验，请稍后重试", "Network problem: cannot verify offline, please retry later";
        ImpossibleTime = "IMPOSSIBLE_TIME", "离线核验时间不可信，已记录待对账", "Offline decision time is impossible: recorded for reconciliation";
        NotYetValid = "NOT_YET_VALID", "未到可用时间", "Not valid yet";
        NoLongerValid = "NO_LONGER_VALID", "已过有效期", "No longer valid";
        OutsideHours = "OUTSIDE_HOURS", "不在可用时段", "Outside the hours of use";
        DailyLimit = "DAILY_LIMIT", "今日次数已用完", "No uses left today";
        TooSoon = "TOO_SOON", "刚刚已核销，请稍后再试", "Used just now, please try again later";
        VenueFull = "VENUE_FULL", "场馆已满，请稍候", "The venue is full, please wait";
        NotInside = "NOT_INSIDE", "未入场，无法离场", "Not inside: cannot exit";
        StoreFailed = "STORE_FAILED", "设备存储故障，无法离线核验，请联系技术人员", "Device storage failure: cannot decide offline, call a technician";
        Unauthorized = "UNAUTHORIZED", "登录已失效，请重新登录", "Session expired, please log in again";
        InvalidCredentials = "INVALID_CREDENTIALS", "用户名或密码错误", "Wrong username or password";
        BadRequest = "BAD_REQUEST", "请求无效", "Invalid request";
        Forbidden = "FORBIDDEN", "无权访问", "Forbidden";
        NotFound = "NOT_FOUND", "未找到", "Not found";
        MethodNotAllowed = "METHOD_NOT_ALLOWED", "不支持该请求方法", "Method not allowed";
        ScanIdReused = "SCAN_ID_REUSED", "scan_id 已用于另一次扫码", "scan_id was already used for a different scan";
        TooManyRequests = "TOO_MANY_REQUESTS", "尝试次数过多，请稍后再试", "Too many attempts, please try again later";
        PayloadTooLarge = "PAYLOAD_TOO_LARGE", "请求体过大", "Request body too large";
        UnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE", "不支持的内容类型", "Unsupported media type";
        Internal = "INTERNAL", "服务器内部错误", "Internal server error";
        ServiceUnavailable = "SERVICE_UNAVAILABLE", "服务暂不可用，请稍后重试", "Service temporarily unavailable, please retry shortly";
    }
}

impl From<DecisionCode> for ApiCode {
    fn from(code: DecisionCode) -> ApiCode {
        // Every decision code is also an API code with the same wire name and messages.
        ApiCode::parse(code.as_str()).unwrap_or(ApiCode::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zh_cn_messages_are_the_contracts() {
        let expected = [
            (DecisionCode::Success, "核销成功"),
            (DecisionCode::AlreadyRedeemed, "该权益已核销"),
            (DecisionCode::NotEntitled, "票券不包含此权益"),
            (DecisionCode::Exhausted, "该权益已用完"),
            (DecisionCode::QrExpired, "二维码已过期，请刷新"),
            (DecisionCode::QrSuperseded, "二维码已失效，请使用最新二维码"),
            (DecisionCode::TicketNotActive, "票券未激活"),
            (DecisionCode::TicketVoid, "票券已作废"),
            (DecisionCode::InvalidQr, "无效二维码"),
            (DecisionCode::WrongMerchant, "无权核销该票券"),
            (
                DecisionCode::OfflineUnverifiable,
                "网络异常，无法离线核验，请稍后重试",
            ),
            (DecisionCode::NotYetValid, "未到可用时间"),
            (DecisionCode::NoLongerValid, "已过有效期"),
            (DecisionCode::OutsideHours, "不在可用时段"),
            (DecisionCode::DailyLimit, "今日次数已用完"),
            (DecisionCode::TooSoon, "刚刚已核销，请稍后再试"),
            (DecisionCode::VenueFull, "场馆已满，请稍候"),
            (DecisionCode::NotInside, "未入场，无法离场"),
        ];
        for (code, message) in expected {
            assert_eq!(code.message(Lang::ZhCn), message, "{code}");
        }
        assert_eq!(
            ApiCode::Unauthorized.message(Lang::ZhCn),
            "登录已失效，请重新登录"
        );
        assert_eq!(
            ApiCode::InvalidCredentials.message(Lang::ZhCn),
            "用户名或密码错误"
        );
    }

    #[test]
    fn every_decision_code_maps_to_the_same_api_code() {
        for code in DecisionCode::ALL {
            let api = ApiCode::from(*code);
            assert_eq!(api.as_str(), code.as_str());
            assert_eq!(api.message(Lang::ZhCn), code.message(Lang::ZhCn));
            assert_eq!(api.message(Lang::En), code.message(Lang::En));
        }
    }

    #[test]
    fn only_the_first_language_tag_counts() {
        let cases = [
            (None, Lang::ZhCn),
            (Some("en"), Lang::En),
            (Some("en-US,zh;q=0.5"), Lang::En),
            (Some("EN-gb"), Lang::En),
            (Some("zh-CN,en;q=0.9"), Lang::ZhCn),
            (Some("fr"), Lang::ZhCn),
            (Some(""), Lang::ZhCn),
        ];
        for (header, expected) in cases {
            assert_eq!(Lang::from_accept_language(header), expected, "{header:?}");
        }
    }
}
