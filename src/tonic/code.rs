//! gRPC's wire format of a status code: the `grpc-status` header, and the code of an HTTP status
//! that comes without one.

use http::{Response, StatusCode};
use tonic::Code;

/// The header that carries a call's status code: in the trailers, or in the headers of a
/// trailers-only response.
pub(super) const GRPC_STATUS: &str = "grpc-status";

/// The highest status code gRPC defines, `UNAUTHENTICATED`.
pub(super) const MAX_CODE: i32 = 16;

/// The status code a response carries before its body: its `grpc-status` header, or, without
/// one, the code of its HTTP status if that is not `200 OK`. `None` when the status is still to
/// come, in the trailers, or when the header is malformed.
pub(super) fn header_code<B>(response: &Response<B>) -> Option<Code> {
    match response.headers().get(GRPC_STATUS) {
        Some(value) => parse_code(value.as_bytes()),
        None if response.status() == StatusCode::OK => None,
        None => Some(code_of_http_status(response.status())),
    }
}

/// A `grpc-status` value, written as gRPC writes it: the code in decimal, without sign, spaces
/// or leading zeros. `None` for anything else, including numbers gRPC does not define.
pub(super) fn parse_code(value: &[u8]) -> Option<Code> {
    let number = match *value {
        [digit @ b'0'..=b'9'] => digit - b'0',
        [b'1', digit @ b'0'..=b'9'] => 10 + (digit - b'0'),
        _ => return None,
    };
    let number = i32::from(number);
    (number <= MAX_CODE).then(|| Code::from_i32(number))
}

/// gRPC's mapping of an HTTP status to a code, for a response without `grpc-status`:
/// <https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md>.
fn code_of_http_status(status: StatusCode) -> Code {
    match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    }
}
