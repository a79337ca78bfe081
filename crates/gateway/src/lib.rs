//! capillary-gateway (under construction).
#![forbid(unsafe_code)]
