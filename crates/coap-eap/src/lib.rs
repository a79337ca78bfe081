//! coap-eap (under construction).
#![forbid(unsafe_code)]
