//! No-Response option (RFC 7967).
//!
//! The option value is a `uint` of 0..=1 bytes; each bit names a class of responses the
//! client is not interested in (RFC 7967 §2.1). Value 0 means "interested in all".
//! Suppression only removes the *response*: a CON request is still acknowledged with an
//! Empty ACK (RFC 7967 §2, "the server MUST still send an Empty ACK").

use crate::msg::{decode_uint, option_number, Code, Message};

/// Bit 2 (value 2): not interested in 2.xx responses.
pub const SUPPRESS_2XX: u8 = 0x02;
/// Bit 4 (value 8): not interested in 4.xx responses.
pub const SUPPRESS_4XX: u8 = 0x08;
/// Bit 5 (value 16): not interested in 5.xx responses.
pub const SUPPRESS_5XX: u8 = 0x10;
/// All three classes (value 26).
pub const SUPPRESS_ALL: u8 = SUPPRESS_2XX | SUPPRESS_4XX | SUPPRESS_5XX;

/// Does No-Response `value` suppress a response with `code` (RFC 7967 §2.1)?
/// Other classes (and non-response codes) are never suppressed.
pub fn suppresses(value: u8, code: Code) -> bool {
    let bit = match code.class() {
        2 => SUPPRESS_2XX,
        4 => SUPPRESS_4XX,
        5 => SUPPRESS_5XX,
        _ => return false,
    };
    value & bit != 0
}

/// The No-Response value carried by `request`, `None` if absent. A value longer than one
/// byte is invalid; it is treated as absent (the option is elective, RFC 7252 §5.4.1).
pub fn value_of(request: &Message) -> Option<u8> {
    let raw = request.option(option_number::NO_RESPONSE)?;
    decode_uint(raw).ok().and_then(|v| u8::try_from(v).ok())
}

/// Should the server withhold a response with `code` to `request`?
pub fn should_suppress(request: &Message, code: Code) -> bool {
    value_of(request).is_some_and(|v| suppresses(v, code))
}

/// Set the No-Response option on a request (value 0 is encoded as an empty option).
pub fn set(request: &mut Message, value: u8) {
    request.set_uint_option(option_number::NO_RESPONSE, u32::from(value));
}
